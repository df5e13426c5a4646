"""Cost routing: which requests the interactive registration redirects, and what they cost."""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from saliency_service.errors import Redirect
from saliency_service.images import Preprocessing
from saliency_service.methods import METHODS
from saliency_service.parsing import Options
from saliency_service.pipeline import SaliencyService, ServiceConfig
from saliency_service.routing import Routing, lower_priority
from saliency_tools import MODEL_NAME, SAMPLED_MODEL_NAME

INTERACTIVE, SAMPLED = MODEL_NAME, SAMPLED_MODEL_NAME
ROUTED = {"sampled_model": SAMPLED, "max_passes": 1}
# Every method at small settings: what each sends through the network is counted below.
REQUESTS = {
    "vanilla": {},
    "gradcam": {},
    "smoothgrad": {"samples": 3, "seed": 1},
    "smoothgrad_sq": {"samples": 2, "seed": 1},
    "vargrad": {"samples": 4, "seed": 1},
    "integrated_gradients": {"steps": 5},
}


def service(model: torch.nn.Module, labels, name: str | None, **routing) -> SaliencyService:
    """Model inputs of 112 x 112 (a quarter of 224 x 224's work): what requests cost in passes,
    which are redirected or deferred, does not depend on the input's size."""
    config = ServiceConfig.from_mapping(routing)
    config = dataclasses.replace(config, preprocessing=Preprocessing(resize=128, crop=112))
    return SaliencyService(copy.deepcopy(model), labels, "cpu", config, name)


def row(image: bytes, **options) -> dict:
    return {
        "image": bytearray(image),
        **{k: bytearray(str(v).encode()) for k, v in options.items()},
    }


def test_configuration() -> None:
    assert Routing.from_mapping({}) == Routing("", 1, 10)
    routing = Routing.from_mapping(ROUTED)
    assert routing.redirects(INTERACTIVE) and routing.redirects("another_name")
    assert not routing.redirects(SAMPLED)  # the sampled registration answers everything
    assert not routing.redirects(None)  # in process (tests, benchmarks): no TorchServe name
    assert not Routing.from_mapping({"sampled_model": ""}).redirects(INTERACTIVE)
    for bad in ({"max_passes": 0}, {"sampled_niceness": 20}, {"sampled_niceness": -1}):
        with pytest.raises(ValueError):
            Routing.from_mapping(bad)


@pytest.mark.parametrize("method", sorted(REQUESTS))
def test_passes_count_the_images_through_the_network(model, labels, chelsea_png, method) -> None:
    """A method's declared cost is what the service really sends through the model."""
    server = service(model, labels, None)
    images = []
    hook = server.model.register_forward_pre_hook(lambda _, args: images.append(len(args[0])))
    try:
        (answer,) = server.handle_batch([row(chelsea_png, method=method, **REQUESTS[method])])
    finally:
        hook.remove()
    assert answer.status == 200, answer.body
    settings = {**METHODS[method].defaults(), **REQUESTS[method]}
    assert sum(images) == METHODS[method].passes(settings)


def test_expensive_requests_are_redirected_before_decoding(model, labels, chelsea_png) -> None:
    interactive = service(model, labels, INTERACTIVE, **ROUTED)
    alone = service(model, labels, None)
    cheap = [row(chelsea_png), row(chelsea_png, method="gradcam"), {"body": bytearray(chelsea_png)}]
    expensive = [
        row(b"not an image: never decoded here", method="smoothgrad", samples=1),
        row(chelsea_png, method="integrated_gradients", steps=1),
    ]
    answers = interactive.handle_batch([expensive[0], cheap[0], expensive[1], cheap[1], cheap[2]])
    for answer in (answers[0], answers[2]):
        assert answer.status == 307
        assert answer.headers == {"Location": f"/predictions/{SAMPLED}"}
        assert answer.body["error"]["code"] == "served_by_another_model"
        assert answer.body["error"]["location"] == f"/predictions/{SAMPLED}"
    assert "2 passes" in answers[0].body["error"]["message"]
    # The cheap neighbours are computed as a batch of their own, exactly as without the others.
    expected = alone.handle_batch(cheap)
    for answer, wanted in zip([answers[1], answers[3], answers[4]], expected, strict=True):
        assert answer.status == 200 and not answer.headers
        assert {**answer.body, "serving": None} == {**wanted.body, "serving": None}
    assert interactive.last_report.error_codes == []  # a redirect is not an error


def test_the_sampled_registration_and_a_raised_limit_answer_in_place(
    model, labels, chelsea_png
) -> None:
    request = row(chelsea_png, method="smoothgrad", samples=3, seed=7)
    (expected,) = service(model, labels, None).handle_batch([request])
    for name, routing in ((SAMPLED, ROUTED), (INTERACTIVE, {**ROUTED, "max_passes": 4})):
        (answer,) = service(model, labels, name, **routing).handle_batch([request])
        assert answer.status == 200
        assert answer.body["saliency"] == expected.body["saliency"]


def test_plain_classification_is_never_redirected() -> None:
    routing = Routing.from_mapping(ROUTED)
    expensive = {"samples": 50, "noise": 0.15, "seed": 1}
    routing.check(Options(saliency=False, method="smoothgrad", settings=expensive))
    with pytest.raises(Redirect):
        routing.check(Options(method="smoothgrad", settings=expensive))


def in_a_child(function: Callable[[], object]) -> object:
    """``function()`` in a forked copy of this process, whose priority may be lowered for good
    without touching this one's; its result comes back as text (``repr`` then literal)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.write(write_end, repr(function()).encode())
            status = 0
        except BaseException:  # reported through the exit status
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed (traceback above)"
    return ast.literal_eval(text)


def test_lower_priority_reaches_every_thread() -> None:
    """Threads already running and threads made later (PyTorch's pool) all yield the CPU.

    In a forked child (this interpreter, its modules already imported), which starts with one
    thread as a fresh interpreter does: its niceness cannot be lowered back."""

    def lower() -> tuple[int, list[int]]:
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        started = threading.Event()
        threading.Thread(target=lambda: (started.set(), time.sleep(5)), daemon=True).start()
        started.wait()
        lower_priority(3)
        threading.Thread(target=lambda: time.sleep(5), daemon=True).start()
        tasks = Path("/proc/self/task").iterdir()
        return niceness, sorted({os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in tasks})

    niceness, threads = in_a_child(lower)
    assert threads == [min(niceness + 3, 19)]


def test_a_batch_holds_at_most_max_batch_passes(model, labels, chelsea_png) -> None:
    """Requests in arrival order while their passes fit; the first always; after the first that
    does not fit, the rest get 503 with Retry-After (first come, first served)."""
    budgeted = service(model, labels, None, max_batch_passes=5)
    alone = service(model, labels, None)
    rows = [
        row(chelsea_png, method="smoothgrad", samples=2, seed=1),  # 3 passes
        row(chelsea_png),  # 1: 4 in all
        row(chelsea_png, method="integrated_gradients", steps=1),  # 3: 7 > 5, deferred
        row(chelsea_png),  # would fit, but waits behind the deferred one
    ]
    answers = budgeted.handle_batch(rows)
    assert [a.status for a in answers] == [200, 200, 503, 503]
    for answer in answers[2:]:
        assert answer.body["error"]["code"] == "busy"
        assert int(answer.headers["Retry-After"]) >= 1
    assert budgeted.last_report.error_codes == ["busy", "busy"]
    expected = alone.handle_batch(rows[:2])
    for answer, wanted in zip(answers[:2], expected, strict=True):
        assert {**answer.body, "serving": None} == {**wanted.body, "serving": None}
    # One request always fits, however large (7 passes > 5).
    (large,) = budgeted.handle_batch([row(chelsea_png, method="vargrad", samples=6, seed=2)])
    assert large.status == 200


def test_the_budget_follows_the_measured_speed(model, labels, chelsea_png) -> None:
    """A slower CPU (more seconds per pass) shrinks the batch, so it still ends in time."""
    budgeted = service(model, labels, None, max_batch_passes=100, max_batch_seconds=9)
    assert budgeted.batch_budget() == 100  # nothing measured yet
    (answer,) = budgeted.handle_batch([row(chelsea_png)])
    assert answer.status == 200 and budgeted.seconds_per_pass > 0
    budgeted.seconds_per_pass = 2.0  # as if the last batches had run at 2 s per image
    assert budgeted.batch_budget() == 4
    rows = [row(chelsea_png, method="smoothgrad", samples=2, seed=3), row(chelsea_png)] * 2
    assert [a.status for a in budgeted.handle_batch(rows)] == [200, 200, 503, 503]
    budgeted.seconds_per_pass = 1000.0
    assert budgeted.batch_budget() == 1  # never less than one request
