"""Decompression bombs nested in containers, sent to the real server: refused with 413 before
decoding, and the worker neither dies nor grows (it once decoded an ICO's 24000x24000 PNG:
2.2 GB and 7 s, inside Pillow's Image.open, before any size check of ours)."""

from __future__ import annotations

import pytest
from hardening import error_of, proc_status
from photos import packaged_photos

from saliency_tools import bombs

pytestmark = pytest.mark.faults  # the longest served tests: -m "not faults" skips them

BOMBS = bombs.bombs()
SERVED = ["ico with png", "ico with dib", "tiff tiles", "gif frame over its screen"]


@pytest.fixture(scope="module")
def worker(server) -> int:
    (pid,) = server.worker_pids()
    return pid


@pytest.mark.parametrize("name", SERVED)
def test_a_nested_bomb_gets_413_and_the_worker_stays(api, server, worker, name) -> None:
    data, code = BOMBS[name]
    peak_before = proc_status(worker)["VmHWM"]
    assert error_of(api.post(data)) == (413, code)
    assert server.worker_pids() == [worker]
    growth = proc_status(worker)["VmHWM"] - peak_before
    assert growth < 64 * 2**20, f"the worker's peak memory grew by {growth / 2**20:.0f} MiB"


def test_icns_is_refused_as_a_format_the_service_does_not_take(api) -> None:
    data, _ = BOMBS["icns with png"]
    response = api.post(data)
    assert error_of(response) == (400, "invalid_image")
    assert "JPEG, PNG" in response.json()["error"]["message"]


def test_the_worker_still_answers(api, server, worker) -> None:
    assert api.post(packaged_photos()["coffee"]).status_code == 200
    assert server.worker_pids() == [worker]
