"""Request rows as TorchServe hands them over: raw, JSON, JSON sent as bytes, multipart."""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saliency_service.errors import RequestError
from saliency_service.labels import Labels, torchvision_categories
from saliency_service.parsing import Options, RequestLimits, SaliencyRequest, parse_request

IMAGE = bytes(range(256)) * 3 + b"\xfb\xff\xfe"  # opaque bytes: parsing does not decode images
B64 = base64.b64encode(IMAGE).decode("ascii")
OPTIONS = {
    "target": 281,
    "topk": 3,
    "objective": "loss",
    "colormap": "hot",
    "overlay": True,
    "saliency": True,
}
EXPECTED = Options(target=281, topk=3, objective="loss", colormap="hot", overlay=True)


def refused(row: Any, labels: Labels, limits: RequestLimits = RequestLimits()) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(row, labels, limits)
    assert caught.value.message
    return caught.value


def as_multipart(image: bytes, options: dict[str, Any]) -> dict[str, bytearray]:
    """TorchServe's row for multipart/form-data: every field as a bytearray."""
    fields = {"image": bytearray(image)}
    for name, value in options.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        fields[name] = bytearray(text.encode())
    return fields


# --- the four shapes of a row -----------------------------------------------------------------


def test_raw_body_is_the_image_with_default_options(labels) -> None:
    request = parse_request({"body": bytearray(IMAGE)}, labels)
    assert isinstance(request, SaliencyRequest)
    assert request.image == IMAGE
    assert isinstance(request.image, bytes)
    assert request.options == Options(
        target=None, topk=5, objective="score", colormap="gray", overlay=False, saliency=True
    )


@pytest.mark.parametrize(
    "row",
    [
        pytest.param({"body": {"image": B64, **OPTIONS}}, id="json"),
        pytest.param({"data": {"image": B64, **OPTIONS}}, id="json-data-key"),
        pytest.param({"body": json.dumps({"image": B64, **OPTIONS}).encode()}, id="json-bytes"),
        pytest.param(
            {"body": bytearray(b"\n  " + json.dumps({"image": B64, **OPTIONS}).encode())},
            id="json-bytearray-leading-space",
        ),
        pytest.param({"body": json.dumps({"image": B64, **OPTIONS})}, id="json-text"),
        pytest.param(as_multipart(IMAGE, OPTIONS), id="multipart"),
    ],
)
def test_every_row_shape_gives_the_same_request(labels, row) -> None:
    request = parse_request(row, labels)
    assert request.image == IMAGE
    assert request.options == EXPECTED


def test_multipart_strings_are_coerced(labels) -> None:
    row = {
        "image": bytearray(IMAGE),
        "target": bytearray(b"281"),
        "topk": bytearray(b" 7 "),
        "objective": bytearray(b"LOSS"),
        "colormap": bytearray(b"hot"),
        "overlay": bytearray(b"true"),
        "saliency": bytearray(b"yes"),
    }
    options = parse_request(row, labels).options
    assert options == Options(
        target=281, topk=7, objective="loss", colormap="hot", overlay=True, saliency=True
    )


@pytest.mark.parametrize(
    "name", ["target", "objective", "colormap", "overlay", "method", "samples"]
)
def test_map_options_are_refused_without_a_map(labels, name) -> None:
    """saliency=false makes no map: an option that shapes the map would be silently dropped."""
    values = {"target": "281", "objective": "loss", "colormap": "hot", "overlay": "true"}
    values |= {"method": "vargrad", "samples": "3"}
    row = {"image": bytearray(IMAGE), "saliency": bytearray(b"false")}
    row[name] = bytearray(values[name].encode())
    if name == "samples":
        row["method"] = bytearray(b"vargrad")
    error = refused(row, labels)
    assert (error.code, error.status) == ("invalid_option", 400)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"image": B64, "topk": 2}).encode("utf-8-sig"),
        json.dumps({"image": B64, "topk": 2}).encode("utf-16"),
        json.dumps({"image": B64, "topk": 2}).encode("utf-16-le"),
        json.dumps({"image": B64, "topk": 2}).encode("utf-32"),
    ],
)
def test_json_in_any_unicode_encoding_is_read(labels, body) -> None:
    assert parse_request({"body": body}, labels).options.topk == 2


@pytest.mark.parametrize(("value", "expected"), [(1, True), (0, False), ("1", True), ("0", False)])
def test_one_rule_for_booleans_in_json_and_forms(labels, value, expected) -> None:
    as_json = parse_request({"body": {"image": B64, "overlay": value}}, labels).options
    as_form = {"image": bytearray(IMAGE), "overlay": bytearray(str(value).encode())}
    assert as_json.overlay == parse_request(as_form, labels).options.overlay == expected


@pytest.mark.parametrize(
    "target",
    ["-0", "-5", "1" * 4000, 10**400, -(10**30)],
    ids=["-0", "-5", "4000 digits", "10**400", "-10**30"],
)
def test_signed_or_huge_targets_are_refused_briefly(labels, target) -> None:
    error = refused({"body": {"image": B64, "target": target}}, labels)
    assert (error.code, error.status) == ("invalid_option", 400)
    assert len(error.message) < 120


@pytest.mark.parametrize(
    ("word", "value"),
    [
        *[(word, True) for word in ("true", "1", "yes", "on", "TRUE")],
        *[(word, False) for word in ("false", "0", "no", "off", "False")],
    ],
)
def test_boolean_words(labels, word, value) -> None:
    row = {"image": bytearray(IMAGE), "overlay": bytearray(word.encode())}
    assert parse_request(row, labels).options.overlay is value


def test_multipart_image_may_be_named_data(labels) -> None:
    row = {"data": bytearray(IMAGE), "topk": bytearray(b"2")}
    request = parse_request(row, labels)
    assert request.image == IMAGE
    assert request.options.topk == 2


def test_json_accepts_integral_floats_and_null_target(labels) -> None:
    doc = {"image": B64, "topk": 4.0, "target": None}
    assert parse_request({"body": doc}, labels).options == Options(topk=4)
    assert parse_request({"body": {"image": B64, "target": 12.0}}, labels).options.target == 12


# --- base64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(B64, id="standard"),
        pytest.param(B64.rstrip("="), id="unpadded"),
        pytest.param(base64.urlsafe_b64encode(IMAGE).decode(), id="urlsafe"),
        pytest.param(base64.urlsafe_b64encode(IMAGE).decode().rstrip("="), id="urlsafe-unpadded"),
        pytest.param("data:image/png;base64," + B64, id="data-url"),
        pytest.param(base64.encodebytes(IMAGE).decode(), id="mime-newlines"),
        pytest.param("  " + B64.replace("A", "A\r\n", 3) + "\n", id="whitespace"),
    ],
)
def test_base64_variants(labels, encoded) -> None:
    assert parse_request({"body": {"image": encoded}}, labels).image == IMAGE


def test_base64_premise_uses_both_alphabets() -> None:
    """The variants above test something: the standard and URL-safe encodings differ."""
    assert "+" in B64 and "/" in B64
    assert base64.urlsafe_b64encode(IMAGE).decode() != B64


@pytest.mark.parametrize("encoded", ["not base64!!", "abc$defg", "QUJD" + "Q", "QUJDé", "////\x00"])
def test_invalid_base64(labels, encoded) -> None:
    error = refused({"body": {"image": encoded}}, labels)
    assert (error.code, error.status) == ("invalid_base64", 400)


def test_base64_over_the_byte_limit(labels) -> None:
    limits = RequestLimits(max_image_bytes=len(IMAGE))
    assert parse_request({"body": {"image": B64}}, labels, limits).image == IMAGE
    larger = base64.b64encode(IMAGE + b"xyz").decode()
    error = refused({"body": {"image": larger}}, labels, limits)
    assert (error.code, error.status) == ("payload_too_large", 413)


# --- malformed bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"image": ',
        b"{not json}",
        b'{"image": "QUJD",}',
        '{"image": 1',
        b'{"image": "\xff\xfe"}',
        b"[1, 2, 3]",
        b'["image"]',
        [1, 2, 3],
        "[]",
        42,
    ],
)
def test_invalid_json(labels, body) -> None:
    error = refused({"body": body}, labels)
    assert (error.code, error.status) == ("invalid_json", 400)


@pytest.mark.parametrize("row", [{}, {"body": b""}, {"body": bytearray()}, {"body": None}])
def test_empty_body(labels, row) -> None:
    assert refused(row, labels).code == "empty_body"


def test_blank_text_body_is_empty(labels) -> None:
    assert refused({"body": "  \n"}, labels).code == "empty_body"


def test_text_that_is_not_json_is_not_an_image(labels) -> None:
    assert refused({"body": "hello"}, labels).code == "invalid_image"


@pytest.mark.parametrize(
    "row",
    [
        {"body": {"target": 3}},
        {"body": {"image": ""}},
        {"body": {"image": " \n "}},
        {"target": bytearray(b"3"), "topk": bytearray(b"2")},
        {"image": bytearray(), "topk": bytearray(b"2")},
    ],
)
def test_missing_image(labels, row) -> None:
    assert refused(row, labels).code == "missing_image"


def test_image_must_be_a_base64_string(labels) -> None:
    error = refused({"body": {"image": [1, 2]}}, labels)
    assert error.code == "invalid_option"


def test_two_image_fields(labels) -> None:
    error = refused({"image": bytearray(IMAGE), "data": bytearray(IMAGE)}, labels)
    assert error.code == "invalid_option"


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        {"body": {"image": B64, "foo": 1}},
        {"body": {"image": B64, "topk": 3, "Target": 3}},
        {"image": bytearray(IMAGE), "colour": bytearray(b"hot")},
    ],
)
def test_unknown_option(labels, row) -> None:
    error = refused(row, labels)
    assert error.code == "unknown_option"
    fields = row.get("body", row)
    unknown = next(k for k in fields if k not in (*OPTIONS, "image"))
    assert repr(unknown) in error.message
    assert "topk" in error.message  # the known options are listed


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("topk", 0),
        ("topk", 21),
        ("topk", -3),
        ("topk", "abc"),
        ("topk", True),
        ("topk", 2.5),
        ("topk", None),
        ("topk", [3]),
        ("target", 1000),
        ("target", -1),
        ("target", True),
        ("target", 3.5),
        ("target", "1000"),
        ("target", "-1"),
        ("target", ""),
        ("target", [281]),
        ("target", {"index": 281}),
        ("objective", "foo"),
        ("objective", 1),
        ("objective", None),
        ("colormap", "jet"),
        ("colormap", ""),
        ("overlay", "maybe"),
        ("overlay", None),
        ("saliency", "maybe"),
        ("saliency", [True]),
    ],
)
def test_invalid_option_values(labels, name, value) -> None:
    error = refused({"body": {"image": B64, name: value}}, labels)
    assert (error.code, error.status) == ("invalid_option", 400)
    assert repr(name) in error.message


@pytest.mark.parametrize(("name", "value"), [("topk", "0"), ("topk", "x"), ("overlay", "maybe")])
def test_invalid_multipart_values(labels, name, value) -> None:
    row = {"image": bytearray(IMAGE), name: bytearray(value.encode())}
    assert refused(row, labels).code == "invalid_option"


def test_non_utf8_multipart_value(labels) -> None:
    row = {"image": bytearray(IMAGE), "colormap": bytearray(b"\xff\xfe")}
    assert refused(row, labels).code == "invalid_option"


def test_topk_bounds_follow_the_limits(labels) -> None:
    limits = RequestLimits(max_topk=3)
    assert parse_request({"body": {"image": B64, "topk": 3}}, labels, limits).options.topk == 3
    assert refused({"body": {"image": B64, "topk": 4}}, labels, limits).code == "invalid_option"
    assert parse_request({"body": {"image": B64, "topk": 20}}, labels).options.topk == 20


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("topk", "+-5", "invalid_option"),
        ("topk", "--3", "invalid_option"),
        ("topk", "\u00b2", "invalid_option"),  # a superscript 2: isdigit() but not int()
        ("topk", "9" * 5000, "invalid_option"),  # past int()'s digit limit
        ("target", "-+3", "unknown_label"),  # neither a number nor a name
    ],
)
def test_malformed_numbers_are_refused(labels, name, value, code) -> None:
    assert refused({"body": {"image": B64, name: value}}, labels).code == code


def test_deeply_nested_json_is_invalid_json(labels) -> None:
    assert refused({"body": b"[" * 100_000}, labels).code == "invalid_json"


def test_huge_integer_noise_is_an_invalid_option(labels) -> None:
    body = json.dumps({"image": B64, "method": "smoothgrad", "noise": 10**400}).encode()
    assert refused({"body": body}, labels).code == "invalid_option"


# --- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "index"),
    [
        ("tabby", 281),
        ("Golden Retriever", 207),
        ("GOLDEN RETRIEVER", 207),
        ("  golden   retriever ", 207),
        ("crane bird", 134),
        ("maillot tank suit", 639),
        ("281", 281),
        ("+281", 281),
        (" 0 ", 0),
        ("999", 999),
    ],
)
def test_target_by_name_or_index(labels, label, index) -> None:
    assert labels.resolve(label) == index
    assert parse_request({"body": {"image": B64, "target": label}}, labels).options.target == index


def test_torchvision_names_premises(labels) -> None:
    """What the ambiguity tests below rely on about torchvision's names."""
    names = torchvision_categories()
    assert len(names) == 1000
    assert (names[134], names[517]) == ("crane bird", "crane")
    assert (names[264], names[474]) == ("Cardigan", "cardigan")
    assert (names[638], names[639]) == ("maillot", "maillot tank suit")
    assert labels[207] == "golden retriever"


@pytest.mark.parametrize(
    ("label", "indices"),
    [
        ("crane", [134, 517]),
        ("cardigan", [264, 474]),
        ("Cardigan", [264, 474]),
        ("maillot", [638, 639]),
    ],
)
def test_ambiguous_labels(labels, label, indices) -> None:
    for row in (
        {"body": {"image": B64, "target": label}},
        {"image": bytearray(IMAGE), "target": bytearray(label.encode())},
    ):
        error = refused(row, labels)
        assert (error.code, error.status) == ("ambiguous_label", 400)
        assert str(indices) in error.message


@pytest.mark.parametrize("label", ["unicorn", "golden", "retriever golden", "tabby cat"])
def test_unknown_labels(labels, label) -> None:
    error = refused({"body": {"image": B64, "target": label}}, labels)
    assert (error.code, error.status) == ("unknown_label", 400)
    assert repr(label) in error.message


def test_labels_need_1000_names() -> None:
    with pytest.raises(ValueError):
        Labels(torchvision_categories()[:999])


@pytest.mark.parametrize("shape", ["list", "index_to_name"])
def test_labels_from_json(tmp_path, shape) -> None:
    names = torchvision_categories()
    data = names if shape == "list" else {str(i): name for i, name in enumerate(names)}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    loaded = Labels.from_json(path)
    assert loaded.names == names
    assert loaded.resolve("tabby") == 281


# --- property: a RequestError or a request, nothing else ---------------------------------------

OPTION_KEYS = [*OPTIONS, "image", "data", "body", "foo"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**4), 10**4)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["281", "tabby", "crane", "hot", "loss", "true", " 3 ", B64]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
option_values = json_values | st.from_regex(r"\A[ +-]{0,2}[0-9]{1,4} ?\Z")
documents = st.fixed_dictionaries(
    {},
    optional={
        "image": st.just(B64) | st.text(alphabet=string.ascii_letters + "+/=-_ \n", max_size=16),
        **{name: option_values for name in OPTIONS},
        "foo": json_values,
    },
)


def as_field(value: Any) -> bytes:
    """A multipart field's bytes: text as typed, anything else as its JSON."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


multipart = st.dictionaries(
    st.sampled_from(OPTION_KEYS) | st.text(max_size=6),
    st.binary(max_size=16) | option_values.map(as_field),
    max_size=5,
)
rows = st.one_of(
    st.fixed_dictionaries({"body": documents}),
    documents.map(lambda d: {"body": json.dumps(d).encode()}),
    st.fixed_dictionaries({"body": st.binary(max_size=32) | st.text(max_size=32) | json_values}),
    multipart,
    json_values,
)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(row=rows)
def test_any_row_gives_a_request_or_a_request_error(labels, row) -> None:
    try:
        request = parse_request(row, labels)
    except RequestError as error:
        assert error.code and error.message
        assert 400 <= error.status < 500
        return
    assert isinstance(request, SaliencyRequest)
    assert isinstance(request.image, bytes) and request.image
    options = request.options
    assert options.target is None or 0 <= options.target < 1000
    assert 1 <= options.topk <= 20
    assert options.objective in ("score", "loss")
    assert options.colormap in ("gray", "hot")
    assert isinstance(options.overlay, bool) and isinstance(options.saliency, bool)
