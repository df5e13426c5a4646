"""The benchmarks' load generation: slices against a local HTTP server, the round-robin order,
the figures of a cell, and what each contender sends."""

from __future__ import annotations

import email
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import ClassVar

import pytest

from saliency_tools.bench import served, serving
from saliency_tools.bench.load import Cell, Contender, Slice, rotated, run_slice, slice_requests
from saliency_tools.bench.modes import QUICK
from saliency_tools.bench.photos import Photo
from saliency_tools.bench.serving import VARIANTS
from saliency_tools.bench.stock import STOCK
from saliency_tools.server import free_port


def test_the_order_rotates_by_one_every_round() -> None:
    names = ["a", "b", "c"]
    assert [rotated(names, r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    assert rotated(("x",), 5) == ["x"]


def test_a_slice_lasts_about_the_seconds_asked_with_two_requests_per_thread_at_least() -> None:
    assert slice_requests(12.0, 5.0, 8) == 60
    assert slice_requests(1.0, 5.0, 8) == 16
    assert slice_requests(0.0, 5.0, 4) == slice_requests(float("nan"), 5.0, 4) == 8


def test_a_cell_pools_its_slices() -> None:
    first = Slice([0.1, 0.3], [100, 300], errors=1, elapsed=1.0)
    second = Slice([0.2] * 6, [200] * 6, errors=0, elapsed=1.0)
    cell = Cell([first, second])
    assert cell.requests == 9 and cell.errors == 1
    assert cell.rate == 4.0  # 8 answers in 2 s, not the mean of the slices' rates
    assert cell.rates == [2.0, 6.0]
    assert cell.percentile(50) == pytest.approx(200.0)  # milliseconds
    assert cell.mean_bytes == pytest.approx(200.0)
    empty = Cell()
    assert empty.rate == 0.0 and math.isnan(empty.percentile(50)) and math.isnan(empty.mean_bytes)


class Echo(BaseHTTPRequestHandler):
    """Answers the body back with 200, or 500 for a body b"fail"; records what it saw."""

    protocol_version = "HTTP/1.1"  # keeps connections alive
    seen: ClassVar[list[tuple[str, str, str, bytes, int]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            entry = (self.path, self.headers["Authorization"], self.headers["Content-Type"])
            self.seen.append((*entry, body, self.client_address[1]))
        self.send_response(500 if body == b"fail" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[int]:
    Echo.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_slice_sends_the_bodies_in_turn_and_counts_the_failures(echo: int) -> None:
    bodies = [(b"aa", "x/a"), (b"bbbb", "x/b"), (b"fail", "x/f")]
    contender = Contender("k", "label", "/predictions/m", bodies)
    piece = run_slice(echo, "secret", contender, concurrency=3, count=7)

    # requests 0..6 send bodies 0, 1, 2, 0, 1, 2, 0: five answers, two failures
    assert len(piece.latencies) == 5 and piece.errors == 2
    assert sorted(piece.sizes) == [2, 2, 2, 4, 4]
    assert piece.elapsed > 0 and all(0 < latency <= piece.elapsed for latency in piece.latencies)
    assert sorted(body for *_, body, _ in Echo.seen) == sorted(
        [b"aa", b"bbbb", b"fail"] * 2 + [b"aa"]
    )
    assert {(path, auth) for path, auth, *_ in Echo.seen} == {("/predictions/m", "Bearer secret")}
    assert {(kind, body) for _, _, kind, body, _ in Echo.seen} == {(k, b) for b, k in bodies}
    assert len({port for *_, port in Echo.seen}) <= 3  # one kept-alive connection per thread


def test_requests_nobody_answers_are_errors() -> None:
    contender = Contender("k", "label", "/", [(b"x", "x/x")])
    piece = run_slice(free_port(), "key", contender, concurrency=2, count=4)
    assert (piece.latencies, piece.sizes, piece.errors) == ([], [], 4)


# --- scripts/bench.py's contenders and their schedule --------------------------------------------


def test_the_contenders_send_raw_photos_or_a_form_without_a_map() -> None:
    photo = Photo("cat.jpg", b"\xff\xd8jpeg", (10, 10))
    pool = served.contenders([photo])
    assert pool["b"].bodies == pool["a_stock"].bodies == [(photo.data, "application/octet-stream")]
    assert pool["c"].path == f"/explanations/{STOCK}" and pool["a_stock"].path.endswith(STOCK)
    body, kind = pool["a_ours"].bodies[0]
    message = email.message_from_bytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.walk()}
    assert parts["image"].get_payload(decode=True) == photo.data
    assert parts["image"].get_filename() == "cat.jpg"
    assert parts["saliency"].get_payload(decode=True) == b"false"
    assert parts["saliency"].get_content_type() == "text/plain"


def test_server_settings_are_measured_where_they_matter() -> None:
    keys = served.lever_keys(["", "spin", "d5"])
    assert keys == {
        "a_stock@spin": (8,),
        "b@spin": (8,),
        "a_stock@d5": (1, 8),
        "b@d5": (1, 8),
    }
    assert len(served.lever_keys([v.key for v in VARIANTS])) == 2 * (len(VARIANTS) - 1)


def test_the_schedule_warms_up_then_rotates_with_captum_after_the_middle_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int, int]] = []

    def fake_slice(port, key, contender, concurrency, count) -> Slice:
        calls.append((contender.key, concurrency, count))
        return Slice([0.1] * count, [1] * count, 0, 1.0)

    monkeypatch.setattr(served, "run_slice", fake_slice)
    monkeypatch.setattr(served, "sanity_check", lambda *_: {"agree": 1, "photos": ["p"]})
    server = SimpleNamespace(ports={"inference_address": 1}, keys={"inference": "k"})
    result = served.drive({"": server}, [], QUICK, log=lambda _: None)

    fast = ["a_stock", "a_ours", "b"]
    assert calls[:3] == [(name, 8, 24) for name in fast]
    at_one = [(name, 1, QUICK.requests[1]) for name in fast]
    at_one += [("c", 1, QUICK.captum_requests[1])]  # after round (2 - 1) // 2 = 0
    at_one += [(name, 1, QUICK.requests[1]) for name in rotated(fast, 1)]
    assert calls[3:10] == at_one
    assert ("c", 32, 0) not in calls and ("c", 32) not in result["cells"]  # 0: not measured
    assert len(result["cells"][("b", 8)].slices) == QUICK.rounds
    assert result["labels"]["c"] == "(c) stock /explanations (Captum IG)"


def test_what_the_reports_say_of_a_server() -> None:
    described = {"batchSize": 8, "maxBatchDelay": 20, "workers": [{"pid": 1}, {"pid": 2}]}
    assert serving.batching(described) == "batchSize 8, maxBatchDelay 20 ms, 2 worker"
    line = f"{serving.OURS} ready on cpu (pid 7, %d torch threads, nice 0)\n"  # as the handler logs
    log = line % 4 + line % 2
    assert serving.torch_threads(SimpleNamespace(log_text=lambda: log)) == "2"  # the last start
    assert serving.torch_threads(SimpleNamespace(log_text=lambda: "")) == "?"
