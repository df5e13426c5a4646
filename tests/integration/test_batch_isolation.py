"""Inside one batch every request is answered on its own: a bad neighbour, a different endpoint
or different options change nothing about a request's answer.

TorchServe hands a whole batch to one handle() call. The tests make 8 requests land in one batch
(batchSize 8), check from the answers' ``serving.batch_size`` that they did, and compare every
answer with the one the same request gets alone.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import reference
from hardening import assert_same_answer, error_of, png_claiming
from photos import encode, packaged_photos
from PIL import Image
from serving import post, wait_for


def eight_images() -> list[bytes]:
    """Eight different photos: crops and rotations of chelsea and coffee."""
    from skimage import data

    out = []
    for photo in (data.chelsea(), data.coffee()):
        image = Image.fromarray(photo)
        for k in range(4):
            variant = image.rotate(20 * k) if k % 2 else image.crop((10 * k, 0, image.width, 280))
            out.append(encode(variant.convert("RGB")))
    return out


IMAGES = eight_images()
ATTEMPTS = 3
# The answer of a request in a batch of 8 may differ from its answer alone by float summation
# order (as in test_batching): see reference.assert_maps_agree.
LEVELS = reference.MAX_LEVELS


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pending(server) -> int:
    return server.describe()["jobQueueStatus"]["pendingRequests"]


def in_one_batch(server, calls: list[Callable], is_answer: Callable[[int], bool]) -> list:
    """Answers to the calls, sent so that they make up one batch.

    Concurrent clients alone do not guarantee it on a busy machine (a batch closes 20 ms after
    its first request). So the worker is paused (SIGSTOP) while it holds a first request; the
    calls then wait in TorchServe's queue, and when the worker resumes the next batch takes all
    of them. The answers' ``serving.batch_size`` confirms it.
    """
    (worker,) = server.worker_pids()
    sizes: set[int] = set()
    for _ in range(ATTEMPTS):
        with ThreadPoolExecutor(max_workers=len(calls) + 1) as pool:
            os.kill(worker, signal.SIGSTOP)
            try:
                blocker = pool.submit(post, server, IMAGES[0])
                time.sleep(0.5)  # its batch (of one) is formed and handed to the paused worker
                futures = [pool.submit(call) for call in calls]
                wait_for(lambda: pending(server) >= len(calls), timeout=30)
            finally:
                os.kill(worker, signal.SIGCONT)
            assert blocker.result().status_code == 200
            responses = [future.result() for future in futures]
        sizes = {
            r.json()["serving"]["batch_size"]
            for i, r in enumerate(responses)
            if is_answer(i) and r.status_code == 200
        }
        if sizes == {len(calls)}:
            return responses
        print(f"\n[batch] not one batch (sizes {sizes}), trying again")
    pytest.fail(f"{len(calls)} requests never shared one batch (sizes {sizes})")


BAD_NEIGHBOURS = {
    "undecodable": ({"body": b"not an image at all"}, 400, "invalid_image"),
    "bad option": ({"json_body": {"image": b64(IMAGES[0]), "target": 1000}}, 400, "invalid_option"),
    "decompression bomb": ({"body": png_claiming(30_000, 30_000)}, 413, "image_too_large"),
    "malformed json": (
        {"body": b'{"image": ', "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_json",
    ),
}


@pytest.fixture(scope="module")
def alone(server) -> list[dict]:
    """Each image's answer when it is the only request."""
    return [post(server, image).json() for image in IMAGES]


@pytest.mark.parametrize("kind", sorted(BAD_NEIGHBOURS))
def test_one_bad_request_fails_alone(server, alone, kind) -> None:
    bad, status, code = BAD_NEIGHBOURS[kind]
    bad_at = 3
    calls = [
        (lambda kwargs=bad: post(server, **kwargs))
        if i == bad_at
        else (lambda image=image: post(server, image))
        for i, image in enumerate(IMAGES)
    ]
    responses = in_one_batch(server, calls, lambda i: i != bad_at)
    assert error_of(responses[bad_at]) == (status, code)
    for i, response in enumerate(responses):
        if i != bad_at:
            assert response.status_code == 200, response.text[:300]
            assert_same_answer(alone[i], response.json(), LEVELS)


def test_predictions_and_explanations_in_one_batch_are_answered_as_asked(server) -> None:
    """Even indices ask /predictions (half of them for classification only), odd /explanations."""

    def request(i: int):
        image = IMAGES[i]
        if i % 2:
            return lambda: post(server, image, endpoint="explanations")
        if i % 4 == 0:
            return lambda: post(server, json_body={"image": b64(image), "saliency": False})
        return lambda: post(server, image)

    calls = [request(i) for i in range(8)]
    alone = [call().json() for call in calls]
    responses = in_one_batch(server, calls, lambda i: True)
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text[:300]
        answer = response.json()
        assert_same_answer(alone[i], answer, LEVELS)
        assert ("saliency" in answer) == (i % 4 != 0)


OPTION_SETS = [
    {},
    {"target": 281},
    {"target": "espresso", "objective": "loss"},
    {"objective": "loss", "colormap": "hot"},
    {"colormap": "hot", "overlay": True, "topk": 1},
    {"topk": 20, "target": 0},
    {"saliency": False, "topk": 3},
    {"overlay": True, "objective": "score", "target": "tabby"},
]


def test_each_request_gets_its_own_options_in_a_shared_batch(server) -> None:
    photo = packaged_photos()["chelsea"]
    calls = [
        (lambda options=options: post(server, json_body={"image": b64(photo), **options}))
        for options in OPTION_SETS
    ]
    alone = [call().json() for call in calls]
    responses = in_one_batch(server, calls, lambda i: True)
    for options, single, response in zip(OPTION_SETS, alone, responses, strict=True):
        assert response.status_code == 200, response.text[:300]
        answer = response.json()
        assert_same_answer(single, answer, LEVELS)
        assert len(answer["topk"]) == options.get("topk", 5)
        if "target" in options:
            assert (
                answer["target"]["label"].lower() == str(options["target"]).lower()
                or answer["target"]["index"] == options["target"]
            )
        if options.get("saliency", True):
            assert answer["saliency"]["objective"] == options.get("objective", "score")
            assert ("heatmap" in answer) == (options.get("colormap") == "hot")
            assert ("overlay" in answer) == options.get("overlay", False)
    # One image, eight option sets: the maps really differ between requests.
    maps = {r.json()["saliency"]["png"] for r in responses if "saliency" in r.json()}
    assert len(maps) >= 4
