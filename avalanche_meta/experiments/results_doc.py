"""Writes sections of the results document (``docs/RESULTS.md``).

Each reproduction or bench owns one section, delimited by HTML comments, so that
re-running one of them replaces its own section and leaves the others alone.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Optional

#: The results document of a source checkout.
DEFAULT_RESULTS = Path(__file__).resolve().parents[2] / "docs" / "RESULTS.md"

_HEADER = """# Results

Every figure here was measured by the command written beside it, on the machine and the
date written beside it. Sections are rewritten by `avalanche-meta reproduce NAME` and
`avalanche-meta bench NAME`; what was not run is said in each section.
"""


def results_path() -> Path:
    """The results document: ``$AVALANCHE_META_RESULTS`` or ``docs/RESULTS.md``."""
    return Path(os.environ.get("AVALANCHE_META_RESULTS", DEFAULT_RESULTS))


def machine_description() -> str:
    """One line describing this machine (CPU count, CPU model, Python, torch)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}"
    )


def git_revision() -> str:
    """The current git commit (short), or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(command: str) -> str:
    """The lines every section starts with: command, machine, date, revision."""
    return (
        f"- command: `{command}`\n"
        f"- machine: {machine_description()}\n"
        f"- date: {date.today().isoformat()}, revision {git_revision()}\n"
    )


def write_section(key: str, title: str, body: str, path: Optional[Path] = None) -> Path:
    """Replace (or append) the section ``key`` of the results document.

    :param key: a stable identifier, e.g. ``"reproduce mer-mnist --quick"``.
    :param title: the section's heading (without ``#``).
    :param body: Markdown; should start with :func:`provenance`.
    :return: the path written.
    """
    path = Path(path or results_path())
    text = path.read_text() if path.exists() else _HEADER
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    block = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
