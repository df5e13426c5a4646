"""Where a benchmark ran: the machine, its load, the date."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata as md
import os
import platform
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "torchserve", "captum", "pillow")


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": f"{torch.get_num_threads()} intra-op, "
        f"{torch.get_num_interop_threads()} inter-op",
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def run_info(**extra: Any) -> dict[str, Any]:
    """The date, the machine and the load at the start of a run (``load_end`` is added after)."""
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "load_start": loadavg(),
        **extra,
    }
