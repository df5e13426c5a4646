"""Cost isolation through the real server: the interactive registration redirects expensive
explanations to the sampled one, whose worker yields the CPU; nothing restarts."""

from __future__ import annotations

import base64
import json
import os

import reference
from photos import packaged_photos

from saliency_tools import MODEL_NAME, SAMPLED_MODEL_NAME, client

CHELSEA = base64.b64encode(packaged_photos()["chelsea"]).decode()
EXPENSIVE = {"image": CHELSEA, "method": "smoothgrad", "samples": 4, "seed": 11}


def test_expensive_requests_are_redirected_and_answered_there(api, server) -> None:
    workers = server.worker_pids(None)
    redirected = api.post(json_body=EXPENSIVE, allow_redirects=False)
    assert redirected.status_code == 307
    assert redirected.headers["Location"] == f"/predictions/{SAMPLED_MODEL_NAME}"
    error = redirected.json()["error"]
    assert error["code"] == "served_by_another_model"
    assert error["location"] == redirected.headers["Location"]

    followed = api.post(json_body=EXPENSIVE)  # requests resends the body and the token
    assert followed.status_code == 200 and followed.history[0].status_code == 307
    direct = api.post(json_body=EXPENSIVE, model=SAMPLED_MODEL_NAME)
    assert direct.status_code == 200 and not direct.history
    assert followed.json()["saliency"]["seed"] == direct.json()["saliency"]["seed"] == 11
    reference.assert_maps_agree(
        reference.decode_png(followed.json()["saliency"]["png"]),
        reference.decode_png(direct.json()["saliency"]["png"]),
        255,
    )
    assert server.worker_pids(None) == workers


def test_cheap_requests_are_answered_where_they_arrive(api) -> None:
    for method in ("vanilla", "gradcam"):
        response = api.post(json_body={"image": CHELSEA, "method": method}, allow_redirects=False)
        assert response.status_code == 200 and response.json()["saliency"]["method"] == method
    plain = {"image": CHELSEA, "saliency": False}
    assert api.post(json_body=plain, allow_redirects=False).status_code == 200


def test_the_sampled_worker_yields_the_cpu(server) -> None:
    """nice +10 (handler/model-config.yaml): under load the interactive worker keeps the cores."""
    (interactive,) = server.worker_pids(MODEL_NAME)
    (sampled,) = server.worker_pids(SAMPLED_MODEL_NAME)
    # Every thread of the sampled worker, PyTorch's pool included, runs 10 steps nicer.
    nice = {
        pid: {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")}
        for pid in (interactive, sampled)
    }
    (base,) = nice[interactive]
    assert nice[sampled] == {min(base + 10, 19)}


def test_the_client_library_follows_the_redirect(api, server) -> None:
    image = packaged_photos()["chelsea"]
    options = {"method": "smoothgrad", "samples": 4, "seed": 11}
    answer = client.post_image(image, options, server.url("inference"), server.keys["inference"])
    direct = api.post(json_body=EXPENSIVE, model=SAMPLED_MODEL_NAME).json()
    assert answer["saliency"]["seed"] == 11 and answer["prediction"] == direct["prediction"]
    reference.assert_maps_agree(
        reference.decode_png(answer["saliency"]["png"]),
        reference.decode_png(direct["saliency"]["png"]),
        255,
    )


def test_the_client_script_asks_for_any_method(server, tmp_path) -> None:
    photo = tmp_path / "chelsea.png"
    photo.write_bytes(packaged_photos()["chelsea"])
    common = ["--url", server.url("inference"), "--token", server.keys["inference"]]
    out = tmp_path / "out"
    ig = ["--method", "integrated_gradients", "--steps", "4", "--baseline", "black"]
    assert client.main([str(photo), *common, *ig, "--out", str(out)]) == 0
    saliency = json.loads((out / "chelsea.json").read_text())["saliency"]
    assert (saliency["method"], saliency["steps"], saliency["baseline"]) == (
        "integrated_gradients",
        4,
        "black",
    )
