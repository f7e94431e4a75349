#!/usr/bin/env bash
# Creates .venv and installs avalanche-meta with everything it needs, from nothing.
#
# Idempotent: a stamp file records a hash of the inputs (this script and
# pyproject.toml); when it matches, nothing is reinstalled.
#
# learn2learn 0.2.0 (the only release on PyPI) is a source distribution whose
# pre-generated C files do not compile on Python >= 3.11 (learnables/learn2learn#413).
# We download that sdist, regenerate the C files with a current Cython, drop the
# heavy optional requirements (qpth pins numpy < 2, gsutil pulls ~20 cloud
# packages; neither is used by avalanche-meta) and build a local wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AVALANCHE_META_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
CACHE="$ROOT/.cache"
STAMP="$VENV/.avalanche-meta-installed"
L2L_VERSION="0.2.0"

hash_inputs() {
    cat "$ROOT/scripts/bootstrap.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

want="$(hash_inputs)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    echo "[bootstrap] environment up to date: $VENV"
    exit 0
fi

echo "[bootstrap] creating virtual environment in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
"${PIP[@]}" install -q --upgrade pip setuptools wheel

# torchvision from PyPI pulls a matching torch; there is no CPU-only
# torchvision wheel matching the pre-seeded torch 2.13 CPU wheel.
echo "[bootstrap] installing torch / torchvision / avalanche-lib"
"${PIP[@]}" install -q "torchvision" "avalanche-lib==0.6.*"

if ! "$VENV/bin/python" -c "import learn2learn" >/dev/null 2>&1; then
    echo "[bootstrap] building learn2learn $L2L_VERSION from source"
    mkdir -p "$CACHE/l2l"
    "${PIP[@]}" install -q "cython>=3" gym tqdm requests scipy
    work="$(mktemp -d)"
    "${PIP[@]}" download -q --no-deps --no-binary learn2learn --only-binary cython "learn2learn==$L2L_VERSION" -d "$work"
    tar -xzf "$work/learn2learn-$L2L_VERSION.tar.gz" -C "$work"
    src="$work/learn2learn-$L2L_VERSION"
    (cd "$src" && "$VENV/bin/cython" -3 learn2learn/data/meta_dataset.pyx \
        learn2learn/data/task_dataset.pyx learn2learn/data/transforms.pyx)
    "$VENV/bin/python" - "$src/setup.py" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
for dep in ("'gsutil',", "'qpth>=0.0.15',"):
    assert dep in text, dep
    text = text.replace(dep, "")
open(path, "w").write(text)
PY
    "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$CACHE/l2l" "$src"
    "${PIP[@]}" install -q --no-deps "$CACHE/l2l"/learn2learn-"$L2L_VERSION"-*.whl
    rm -rf "$work"
fi

echo "[bootstrap] installing avalanche-meta (editable, with the dev and ray extras)"
"${PIP[@]}" install -q -e "$ROOT[dev,ray]"
"$VENV/bin/python" -c "from avalanche_meta.utils.quiet_import import import_learn2learn; import_learn2learn(); import avalanche, torchvision"
echo "$want" > "$STAMP"
echo "[bootstrap] done: $VENV"
