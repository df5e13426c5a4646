"""How much ``scripts/bench.py`` measures: the quick and the full run."""

from __future__ import annotations

from dataclasses import dataclass

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
