"""Basic bad input: a 4xx with a machine-readable code, and the server keeps serving."""

from __future__ import annotations

import base64

import pytest
from photos import packaged_photos

GOOD = packaged_photos()["coffee"]


def error_of(response) -> tuple[int, str]:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"body": b"this is not an image"}, 400, "invalid_image"),
        ({"body": GOOD[: len(GOOD) // 3]}, 400, "invalid_image"),
        ({"body": b""}, 400, "empty_body"),
        (
            {"body": b'{"image": ', "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"json_body": {"image": "%%%not-base64%%%"}}, 400, "invalid_base64"),
        ({"json_body": {"picture": "abc"}}, 400, "missing_image"),
        (
            {"json_body": {"image": base64.b64encode(GOOD).decode(), "colour": "red"}},
            400,
            "unknown_option",
        ),
        (
            {"json_body": {"image": base64.b64encode(GOOD).decode(), "topk": 0}},
            400,
            "invalid_option",
        ),
        (
            {"json_body": {"image": base64.b64encode(GOOD).decode(), "target": 1000}},
            400,
            "invalid_option",
        ),
        (
            {"json_body": {"image": base64.b64encode(GOOD).decode(), "target": "crane"}},
            400,
            "ambiguous_label",
        ),
        (
            {"json_body": {"image": base64.b64encode(GOOD).decode(), "target": "unicorn"}},
            400,
            "unknown_label",
        ),
        (
            {"json_body": {"image": base64.b64encode(GOOD).decode(), "objective": "l2"}},
            400,
            "invalid_option",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx(api, kwargs, status, code) -> None:
    body = kwargs.pop("body", None)
    assert error_of(api.post(body, **kwargs)) == (status, code)
    assert api.post(GOOD).status_code == 200  # and the worker still serves


def test_ambiguous_label_lists_the_classes(api) -> None:
    response = api.post(json_body={"image": base64.b64encode(GOOD).decode(), "target": "crane"})
    message = response.json()["error"]["message"]
    assert "134" in message and "517" in message


def test_requests_without_a_valid_token_are_refused(api) -> None:
    assert api.post(GOOD, token=None).status_code in (400, 401)
    assert api.post(GOOD, token="not-the-key").status_code in (400, 401)
