"""How much ``scripts/bench.py`` measures: the quick and the full run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from saliency_tools import ROOT

CONCURRENCY = (1, 8, 32)  # end to end
BATCHES = (1, 8, 32)  # in process


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # round-robin rounds of the fast contenders per concurrency
    requests: dict[int, int]  # per slice (one contender, one round), by concurrency
    captum_requests: dict[int, int]  # one slice per concurrency; 0 = not measured
    repeats: int  # in-process repetitions
    compile: bool
    server_levers: bool  # the extra servers of serving.VARIANTS


QUICK = Mode("quick", 2, {1: 8, 8: 32, 32: 64}, {1: 1, 8: 8, 32: 0}, 2, False, False)
FULL = Mode("full", 4, {1: 32, 8: 128, 32: 160}, {1: 3, 8: 16, 32: 32}, 7, True, True)


def add_run_arguments(parser: argparse.ArgumentParser, served_part: str) -> None:
    """The options both benchmarks take: the mode, the photos, the report file, the parts."""
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    parser.add_argument("--images", type=Path, help="a folder of photos instead of skimage's")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--no-server", action="store_true", help="in-process part only")
    parser.add_argument("--no-inprocess", action="store_true", help=f"{served_part} part only")
