"""A run store: one folder per finished run, keyed by its configuration.

Layout of a store folder::

    <root>/<strategy>-<benchmark>-<scenario>-s<seed>-<key[:12]>/
        config.json     the RunConfig, its full key, the code revision, the worker
        results.json    the run's results (small JSON)
        *.png           plots (optional)
        model.pt        final weights (optional, ``--save-model``)
    <root>/.tmp/        runs being written (one folder each)
    <root>/.running/    one empty marker file per run in progress: name@host@pid

A run is written into ``.tmp`` and renamed into place when it is complete, so a
folder at the top level is always a finished run: an interrupted or killed run
leaves nothing there, and a finished run is never redone. Copying folders between
stores (:func:`merge_stores`) is how runs move between machines.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from avalanche_meta.experiments.config import RunConfig

#: The store used when none is given: ``$AVALANCHE_META_STORE`` or ``runs/store``.
DEFAULT_STORE = Path("runs") / "store"

_revision: Optional[Dict[str, Any]] = None


def default_store_root() -> Path:
    """``$AVALANCHE_META_STORE``, else ``runs/store`` (relative to the current folder)."""
    env = os.environ.get("AVALANCHE_META_STORE")
    return Path(env) if env else DEFAULT_STORE


def code_revision() -> Dict[str, Any]:
    """The package version and, in a git checkout, the commit and whether the work
    tree had uncommitted changes (computed once per process)."""
    global _revision
    if _revision is None:
        import avalanche_meta

        rev: Dict[str, Any] = {"version": avalanche_meta.__version__}
        here = Path(__file__).resolve().parent
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=here,
                timeout=10,
            )
            if commit.returncode == 0 and commit.stdout.strip():
                rev["commit"] = commit.stdout.strip()
                status = subprocess.run(
                    ["git", "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    cwd=here,
                    timeout=30,
                )
                rev["dirty"] = bool(status.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
        _revision = rev
    return dict(_revision)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StoredRun:
    """One finished run in a store: its folder, configuration and results."""

    path: Path
    config: RunConfig
    meta: Dict[str, Any]
    results: Dict[str, Any]


class RunStore:
    """A folder of finished runs keyed by configuration (see the module docstring).

    :param root: the store folder (created on first write).
    """

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # ---------------------------------------------------------------- lookups
    def path(self, config: RunConfig) -> Path:
        """The folder ``config``'s run has (or will have)."""
        return self.root / config.name

    def has(self, config: RunConfig) -> bool:
        """Whether ``config``'s run is finished in this store."""
        return (self.path(config) / "results.json").is_file()

    def load(self, config: RunConfig) -> Optional[Dict[str, Any]]:
        """``config``'s results (with ``out_dir`` and ``results_path`` pointing into
        this store), or None if the store does not hold it.

        :raises RuntimeError: the folder holds another configuration (a clash of
            the 48-bit folder suffix; never seen in practice).
        """
        folder = self.path(config)
        if not (folder / "results.json").is_file():
            return None
        meta = self._read_json(folder / "config.json")
        if meta is not None and meta.get("key") not in (None, config.key):
            raise RuntimeError(
                f"store folder {folder} holds a different configuration than "
                f"{config.label()} (key clash); move it aside."
            )
        return self._results(folder)

    def _results(self, folder: Path) -> Dict[str, Any]:
        res = _relocate(json.loads((folder / "results.json").read_text()), folder)
        res["results_path"] = str(folder / "results.json")
        return res

    @staticmethod
    def _read_json(path: Path) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def runs(self) -> Iterator[StoredRun]:
        """Every finished run, in folder-name order (unreadable folders skipped)."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            meta = self._read_json(folder / "config.json")
            if meta is None or not (folder / "results.json").is_file():
                continue
            try:
                config = RunConfig.from_dict(meta["config"])
                results = self._results(folder)
            except (KeyError, ValueError, OSError):
                continue
            yield StoredRun(folder, config, meta, results)

    # ---------------------------------------------------------------- writing
    def new_tmp(self, config: RunConfig) -> Path:
        """A fresh folder in ``.tmp`` to write ``config``'s run into."""
        tmp = (
            self.root
            / ".tmp"
            / f"{config.name}@{socket.gethostname()}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        )
        tmp.mkdir(parents=True)
        return tmp

    def commit(
        self,
        config: RunConfig,
        tmp: Path,
        results: Dict[str, Any],
        worker: Optional[Dict[str, Any]] = None,
    ) -> Path:
        """Move the finished run in ``tmp`` into place, atomically.

        Writes ``config.json`` and ``results.json`` (``results`` plus the key, the
        code revision and the worker) into ``tmp`` first. If another process
        finished the same run meanwhile, its folder is kept and ``tmp`` deleted.

        :return: the run's folder.
        """
        final = self.path(config)
        revision = code_revision()
        meta = {
            "key": config.key,
            "config": config.to_dict(),
            "revision": revision,
            "worker": worker or worker_info(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        res = _relocate(dict(results), final)
        res.pop("results_path", None)
        res["run_key"] = config.key
        res["revision"] = revision
        (tmp / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "results.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # someone else finished it first
        return final

    def commit_files(
        self,
        config: RunConfig,
        files: Dict[str, bytes],
        results: Dict[str, Any],
        worker: Optional[Dict[str, Any]] = None,
    ) -> Path:
        """Like :meth:`commit`, from the files of a run made elsewhere (a Ray worker
        on another machine): ``{relative path: content}``."""
        tmp = self.new_tmp(config)
        try:
            for rel, data in files.items():
                dest = tmp / rel
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise ValueError(f"refusing to write {rel!r} outside the run")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            return self.commit(config, tmp, results, worker)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ------------------------------------------------------ runs in progress
    def mark_running(self, config: RunConfig) -> Optional[Path]:
        """Create ``.running/<name>@<host>@<pid>`` (None if the store is not
        reachable from here); remove it with :meth:`unmark_running`."""
        try:
            folder = self.root / ".running"
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / f"{config.name}@{socket.gethostname()}@{os.getpid()}"
            marker.touch()
            return marker
        except OSError:
            return None

    @staticmethod
    def unmark_running(marker: Optional[Path]) -> None:
        if marker is not None:
            try:
                marker.unlink()
            except OSError:
                pass

    def running(self) -> List[Tuple[str, str, int]]:
        """Runs in progress: ``(run name, host, pid)`` of each live marker (markers
        of dead processes on this host are removed)."""
        out: List[Tuple[str, str, int]] = []
        folder = self.root / ".running"
        if not folder.is_dir():
            return out
        host = socket.gethostname()
        for marker in folder.iterdir():
            parts = marker.name.split("@")
            if len(parts) != 3:
                continue
            name, mhost = parts[0], parts[1]
            try:
                pid = int(parts[2])
            except ValueError:
                continue
            if mhost == host and not _pid_alive(pid):
                self.unmark_running(marker)
                continue
            out.append((name, mhost, pid))
        return out

    def clean_stale(self) -> int:
        """Delete ``.tmp`` folders left by dead processes of this host.

        :return: how many were deleted.
        """
        folder = self.root / ".tmp"
        if not folder.is_dir():
            return 0
        host, n = socket.gethostname(), 0
        for tmp in folder.iterdir():
            parts = tmp.name.split("@")
            if len(parts) != 4 or parts[1] != host:
                continue
            try:
                pid = int(parts[2])
            except ValueError:
                continue
            if not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)
                n += 1
        self.running()  # drops dead markers
        return n


def _relocate(results: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """``results`` with its file paths (``out_dir``, ``plots``, ``model_path``)
    pointing into ``folder``."""
    results["out_dir"] = str(folder)
    if results.get("plots"):
        results["plots"] = [str(folder / Path(p).name) for p in results["plots"]]
    if results.get("model_path"):
        results["model_path"] = str(folder / Path(results["model_path"]).name)
    return results


def worker_info() -> Dict[str, Any]:
    """Host and process id of the process that ran a run."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def merge_stores(
    src: os.PathLike | str, dst: os.PathLike | str, *, weights: bool = True
) -> Dict[str, List[str]]:
    """Copy every finished run of store ``src`` that ``dst`` lacks into ``dst``.

    Each run is copied into ``dst/.tmp`` and renamed into place, so an interrupted
    merge leaves no half run. A run ``dst`` already holds is kept as it is.

    :param weights: also copy ``model.pt`` files.
    :return: ``{"copied": [...], "kept": [...], "bad": [...]}`` folder names; "bad":
        folders whose ``config.json`` does not match their name (not copied).
    :raises FileNotFoundError: ``src`` is not a folder.
    """
    source, dest = RunStore(src), RunStore(dst)
    if not source.root.is_dir():
        raise FileNotFoundError(f"store merge: source store {src} is not a folder.")
    report: Dict[str, List[str]] = {"copied": [], "kept": [], "bad": []}
    for run in source.runs():
        if run.config.name != run.path.name or run.meta.get("key") != run.config.key:
            report["bad"].append(run.path.name)
            continue
        if dest.has(run.config):
            report["kept"].append(run.path.name)
            continue
        tmp = dest.new_tmp(run.config)
        try:
            shutil.rmtree(tmp)
            ignore = None if weights else shutil.ignore_patterns("model.pt")
            shutil.copytree(run.path, tmp, ignore=ignore)
            try:
                os.rename(tmp, dest.path(run.config))
            except OSError:
                if not dest.has(run.config):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                report["kept"].append(run.path.name)
                continue
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report["copied"].append(run.path.name)
    return report
