"""The TorchServe servers a benchmark starts, and the server settings it compares.

Each server is the production config.properties on free ports (``saliency_tools.server``),
registering ours and the stock model side by side; the workers' OpenMP settings come from the
server's environment, so each setting is a server of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from saliency_tools import MODEL_NAME
from saliency_tools.server import Server

OURS = MODEL_NAME
# The worker's OpenMP settings come from TorchServe's environment; these are the variables the
# variants set, removed from the benchmark's own environment so that each server gets exactly its
# variant's (libgomp reads them when torch loads, so the handler cannot set them itself).
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", **PASSIVE}


@dataclass(frozen=True)
class Variant:
    """A server setting besides the production one, measured for (a) and (b) at one concurrency."""

    key: str
    label: str
    env: dict[str, str]  # of TorchServe and so of its workers
    workers: int = 1
    batching: dict[str, int] = field(default_factory=dict)  # model-config.yaml overrides
    concurrencies: tuple[int, ...] = (8,)  # where the setting matters

    @property
    def model_config(self) -> dict[str, int]:
        return {"minWorkers": self.workers, "maxWorkers": self.workers, **self.batching}


# As served: scripts/serve.sh and the Dockerfile export OMP_WAIT_POLICY=PASSIVE.
MAIN = Variant("", "as served: 1 worker, 2 threads, OMP_WAIT_POLICY=PASSIVE", PASSIVE)
VARIANTS = (
    MAIN,
    Variant("spin", "1 worker, 2 threads, OpenMP's default (spinning) waits", {}),
    Variant("t1", "1 worker, OMP_NUM_THREADS=1", ONE_THREAD),
    Variant("w2", "2 workers, OMP_NUM_THREADS=1", ONE_THREAD, workers=2),
    # A lone request waits maxBatchDelay for company: the delay is a latency cost at low load.
    Variant(
        "d5", "maxBatchDelay 5 ms", PASSIVE, batching={"maxBatchDelay": 5}, concurrencies=(1, 8)
    ),
    Variant("b16", "batchSize 16", PASSIVE, batching={"batchSize": 16}, concurrencies=(32,)),
)


def clear_openmp() -> None:
    """Every server gets exactly its own OpenMP settings, none inherited from this process."""
    for name in OPENMP_VARIABLES:
        os.environ.pop(name, None)


def model_server(
    workdir: Path, store: Path, models: Mapping[str, str], env: Mapping[str, str]
) -> Server:
    """A server (not started) registering ``models``, name -> archive file in ``store``.

    ``Server.start`` waits for every registered model, and ``Server.stop`` ends their workers.
    """
    registrations = ",".join(f"{name}={mar}" for name, mar in models.items())
    return Server(
        workdir=workdir,
        model_store=store,
        extra_config=f"load_models={registrations}",
        env=dict(env),
    )


def batching(described: Mapping) -> str:
    """A described model's (``Server.describe``) batch settings, as the reports print them."""
    return (
        f"batchSize {described['batchSize']}, maxBatchDelay {described['maxBatchDelay']} ms, "
        f"{len(described['workers'])} worker"
    )


def torch_threads(server: Server) -> str:
    """Torch threads per worker, from our handler's log line ("?" if it is not there)."""
    found = re.findall(rf"{OURS} ready on .*?(\d+) torch threads", server.log_text())
    return found[-1] if found else "?"
