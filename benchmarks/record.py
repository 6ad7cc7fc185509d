"""Results rows: where they go, how they are appended, and the machine and versions they carry."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from functools import cache
from pathlib import Path

import pandas as pd

from utils.files import file_lock, write_csv

RESULTS = Path(__file__).resolve().parent / "results"


def append_rows(path: Path, rows: list[dict]) -> Path:
    """Append rows to a results CSV (columns united, the file rewritten atomically under a
    lock, so two harnesses appending at once lose nothing)."""
    if not rows:
        return path
    with file_lock(path):
        old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None
        new = pd.DataFrame(rows).astype(str)
        table = new if old is None else pd.concat([old, new], ignore_index=True)
        write_csv(path, table.fillna(""))
    return path


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what platform says)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def kit_commit() -> str:
    """The kit's git commit (short), "+dirty" when the work tree differs; "" outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return ""
    return head + ("+dirty" if head and dirty else "")


@cache
def environment() -> dict:
    """The machine and versions a row was measured with, and today's date."""
    import timm
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)) if hasattr(
                os, "sched_getaffinity") else os.cpu_count(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "kit_commit": kit_commit(),
            "date": datetime.date.today().isoformat()}
