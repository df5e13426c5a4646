"""Cost isolation: expensive requests are answered by a second registration of the same archive.

TorchServe keeps one first-come-first-served queue per registered model. A request of 50 noisy
copies costs as much as 50 plain ones, so behind a few of them a cheap request waits seconds.
The production config therefore registers the archive twice: the interactive model answers
requests of at most ``max_passes`` images through the network and redirects the others (HTTP
307) to the sampled model, whose queue, batches and worker are its own, and whose worker runs at
a lower CPU priority so that the interactive worker keeps the cores it needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import served_elsewhere
from .methods import METHODS
from .parsing import Options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routing:
    """Where requests over ``max_passes`` go, and how much the sampled worker yields the CPU.

    ``sampled_model`` is the second registration's name; empty turns routing off (one queue).
    """

    sampled_model: str = ""
    max_passes: int = 1
    sampled_niceness: int = 10

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Routing:
        routing = cls(
            str(values.get("sampled_model") or ""),
            int(values.get("max_passes", cls.max_passes)),
            int(values.get("sampled_niceness", cls.sampled_niceness)),
        )
        if routing.max_passes < 1 or not 0 <= routing.sampled_niceness <= 19:
            raise ValueError("max_passes must be >= 1 and sampled_niceness 0..19")
        return routing

    def redirects(self, model_name: str | None) -> bool:
        """Whether the registration ``model_name`` sends its expensive requests elsewhere.

        A service without a name (in process: tests, benchmarks) answers everything itself.
        """
        return bool(self.sampled_model) and model_name not in (None, self.sampled_model)

    def check(self, options: Options) -> None:
        """Raise ``Redirect`` if the request costs more than this model answers."""
        cost = passes(options)
        if cost > self.max_passes:
            raise served_elsewhere(options.method, cost, self.max_passes, self.sampled_model)


def passes(options: Options) -> int:
    """Images a request sends through the network: one forward without a map."""
    return METHODS[options.method].passes(options.settings) if options.saliency else 1


def lower_priority(increment: int) -> None:
    """Raise the nice value of every thread of this process by ``increment``.

    Linux applies ``setpriority(PRIO_PROCESS, 0)`` to the calling thread only; threads made
    later (PyTorch's OpenMP pool) inherit their creator's value, those already running do not.
    """
    if increment <= 0:
        return
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for thread in threads:
        try:
            os.setpriority(
                os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + increment
            )
        except OSError as error:  # a thread that ended meanwhile, or no permission
            log.debug("could not lower the priority of thread %d: %s", thread, error)
