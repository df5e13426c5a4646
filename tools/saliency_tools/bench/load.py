"""Closed-loop load: contenders, slices of requests at a concurrency, rotation, the figures.

Every thread keeps one connection alive and sends its next request when the last is answered.
A contender is measured in several slices, the contenders taking turns in an order that rotates
every round, so that slow phases of a shared machine hit them all alike.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

TIMEOUT = 900  # seconds: a batch of Captum explanations takes tens of seconds on 2 cores


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    path: str
    bodies: list[tuple[bytes, str]]  # (body, content type); request i sends bodies[i % n]


@dataclass
class Slice:
    """The answers to one run of requests: latencies and sizes of the 200s, the others counted."""

    latencies: list[float]
    sizes: list[int]
    errors: int
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


@dataclass
class Cell:
    """Every slice of one contender at one concurrency."""

    slices: list[Slice] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(s.latencies) + s.errors for s in self.slices)

    @property
    def rate(self) -> float:
        """Answered requests per second of all the slices together."""
        elapsed = sum(s.elapsed for s in self.slices)
        return sum(len(s.latencies) for s in self.slices) / elapsed if elapsed else 0.0

    @property
    def rates(self) -> list[float]:
        return [s.rate for s in self.slices if s.elapsed]

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` over every answered request, in milliseconds."""
        values = [v for s in self.slices for v in s.latencies]
        return float(np.percentile(values, q)) * 1000 if values else math.nan

    @property
    def mean_bytes(self) -> float:
        values = [v for s in self.slices for v in s.sizes]
        return float(np.mean(values)) if values else math.nan

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.slices)


def rotated(names: Sequence[str], round_: int) -> list[str]:
    """The order of ``names`` in round ``round_``: shifted by one more every round."""
    shift = round_ % len(names)
    return [*names[shift:], *names[:shift]]


def slice_requests(rate: float, seconds: float, concurrency: int) -> int:
    """Requests for a slice of about ``seconds`` at ``rate`` req/s, at least 2 per thread."""
    if not math.isfinite(rate) or rate <= 0:
        return 2 * concurrency
    return max(2 * concurrency, round(rate * seconds))


def post(
    connection: http.client.HTTPConnection, contender: Contender, index: int, key: str
) -> tuple[int, bytes]:
    """Request ``index`` of ``contender``: its status and body."""
    body, kind = contender.bodies[index % len(contender.bodies)]
    headers = {"Content-Type": kind, "Authorization": f"Bearer {key}"}
    connection.request("POST", contender.path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def run_slice(port: int, key: str, contender: Contender, concurrency: int, count: int) -> Slice:
    """``count`` requests from ``concurrency`` closed-loop threads, each with a kept-alive link."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    sizes: list[int] = []
    errors = [0]

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            while True:
                with lock:
                    index = issued[0]
                    if index >= count:
                        return
                    issued[0] += 1
                start = time.perf_counter()
                try:
                    status, data = post(connection, contender, index, key)
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
                    status, data = 0, b""
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                        sizes.append(len(data))
                    else:
                        errors[0] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Slice(latencies, sizes, errors[0], time.perf_counter() - start)
