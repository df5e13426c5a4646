"""scripts/gpu_check.py's pure parts: correlations, the lever rule, tables, arguments.

No device and no timing here: figures are constructed, and the one test that renders a whole
report feeds it a hand-made one.
"""

from __future__ import annotations

import base64
import io
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from saliency_tools import gpu_check as gc

# --- correlations ------------------------------------------------------------------------------


def test_pearson_by_hand_and_its_edges() -> None:
    assert gc.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert gc.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x - mean = (-1, 0, 1), y - mean = (-1/3, -1/3, 2/3): r = 1 / sqrt(2 * 2/3)
    assert gc.pearson([1, 2, 3], [1, 1, 2]) == pytest.approx(1 / math.sqrt(4 / 3))
    assert math.isnan(gc.pearson(np.ones(4), np.arange(4)))  # a constant map has no correlation
    with pytest.raises(ValueError):
        gc.pearson(np.ones((2, 2)), np.ones(4))


def test_pearson_stays_within_minus_one_and_one() -> None:
    values = np.random.default_rng(0).normal(size=1000) * 1e-3 + 7.0
    assert gc.pearson(values, values) <= 1.0


def png_answer(pixels: np.ndarray, peak: float = 2.0, target: int = 7) -> object:
    """A 200 answer shaped like the service's, carrying ``pixels`` as its 8-bit map."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    saliency = {"png": base64.b64encode(buffer.getvalue()).decode(), "max": peak}
    body = {
        "prediction": {"index": target},
        "target": {"index": target, "score": 1.5},
        "saliency": saliency,
    }
    return SimpleNamespace(status=200, body=body)


def test_compared_maps_rank_ties_as_scipy_does() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 6, size=(16, 16))  # few levels: most pixels tie
    b = a + rng.integers(0, 4, size=(16, 16))
    comparison = gc.compare_answers("cat.jpg", "vanilla", png_answer(a), png_answer(b))
    expected = stats.spearmanr(a.ravel(), b.ravel()).statistic
    assert comparison.spearman == pytest.approx(expected, abs=1e-12)
    assert comparison.classes == (7, 7) and comparison.targets == (7, 7)


def test_maps_agree_takes_equal_constant_maps() -> None:
    zeros = np.zeros((4, 4))
    assert gc.maps_agree(zeros, zeros)  # Pearson is NaN, but the maps are the same
    assert not gc.maps_agree(zeros, np.eye(4))
    noisy = np.arange(16.0).reshape(4, 4)
    assert gc.maps_agree(noisy, noisy + 1e-9 * np.eye(4))
    assert not gc.maps_agree(noisy, noisy[::-1])


# --- the lever rule -----------------------------------------------------------------------------


def test_a_lever_is_kept_only_if_faster_with_maps_that_keep_their_ranks() -> None:
    assert gc.lever_verdict(1.5, 0.995) == "keep"
    assert gc.lever_verdict(1.5, None) == "keep"  # exact by construction (pinned memory)
    assert gc.lever_verdict(1.5, gc.MIN_SPEARMAN) == "keep"  # the boundary is kept
    assert gc.lever_verdict(3.0, 0.9899).startswith("drop: maps' Spearman 0.9899 < 0.99")
    assert gc.lever_verdict(3.0, math.nan).startswith("drop: maps' Spearman")  # NaN never passes
    assert gc.lever_verdict(1.02, 1.0) == "drop: 1.02x, not faster"  # within run-to-run noise
    assert gc.lever_verdict(0.5, 1.0) == "drop: 0.50x, not faster"
    assert gc.lever_verdict(1.01, 0.5).startswith("drop: maps'")  # maps are judged first


def test_skipped_and_untimed_levers_are_never_kept() -> None:
    assert gc.lever_verdict(None, None, "needs cuda") == "skipped: needs cuda"
    assert gc.lever_verdict(2.0, 1.0, "needs cuda") == "skipped: needs cuda"
    assert gc.lever_verdict(None, 1.0) == "skipped: not timed"
    assert gc.lever_verdict(math.nan, 1.0) == "skipped: not timed"
    row = gc.skipped("TF32", "on / off", "needs cuda")
    assert (row.verdict, row.median_s, row.current) == ("skipped: needs cuda", None, False)


def test_ratio_goal_and_limit_notes() -> None:
    assert gc.ratio_verdict(0.85) == "met"
    assert gc.ratio_verdict(0.84) == "not met"
    assert gc.ratio_verdict(None) == gc.ratio_verdict(math.nan) == "n/a"
    stages = {"decode": 0.6, "h2d": 0.1, "compute": 0.2, "encode": 0.1}
    assert gc.limit_note(stages) == "decode 60%"
    assert gc.limit_note({"decode": 0.0, "compute": 0.0}) == "n/a"


# --- tables -------------------------------------------------------------------------------------


def test_fmt_numbers_for_tables() -> None:
    assert gc.fmt(None) == ""
    assert gc.fmt(True) == "yes"
    assert gc.fmt(12345) == "12,345"
    assert gc.fmt(1234.56) == "1,235"
    assert gc.fmt(12.345) == "12.3"
    assert gc.fmt(1.2345) == "1.23"
    assert gc.fmt(0.0) == "0.00"
    assert gc.fmt(0.001234) == "0.0012"
    assert gc.fmt(0.99951, 4) == "0.9995"
    assert gc.fmt(math.nan) == gc.fmt(math.inf) == "n/a"
    assert gc.fmt("text") == "text"


def test_markdown_table_aligns_numbers_right_and_escapes_pipes() -> None:
    table = gc.markdown_table(
        ["name", "value", "ratio", "note"],
        [["a|b", 1234.5, "1.50x", None], ["c", 2, "n/a", "x"], ["d"]],
    )
    assert table.splitlines() == [
        "| name | value | ratio | note |",
        "|---|---:|---:|---|",
        "| a\\|b | 1,234 | 1.50x |  |",  # round half to even: 1234.5 -> 1,234
        "| c | 2 | n/a | x |",
        "| d |  |  |  |",  # short rows are padded
    ]


def test_markdown_table_refuses_rows_wider_than_the_header() -> None:
    with pytest.raises(ValueError):
        gc.markdown_table(["one"], [[1, 2]])


def test_an_empty_column_is_left_aligned() -> None:
    assert gc.markdown_table(["a", "b"], [["x", None]]).splitlines()[1] == "|---|---|"


def test_render_a_constructed_report() -> None:
    timing = {
        "method": "vanilla",
        "batch": 8,
        "median_s": 0.1,
        "best_s": 0.09,
        "stages_s": {"decode": 0.05, "h2d": 0.0, "compute": 0.04, "encode": 0.01, "other": 0.0},
        "note": "",
        "images_per_s": 80.0,
    }
    plain = timing | {"method": gc.PLAIN, "median_s": 0.08, "images_per_s": 100.0}
    report = {
        "environment": {
            "device": "cpu",
            "python": "3.12",
            "torch": "2.11",
            "torchvision": "0.26",
            "pillow": "12",
            "cpu": "x86_64, 2 cores",
            "torch_threads": 1,
        },
        "command": "python scripts/gpu_check.py --quick",
        "mode": "quick",
        "date": "today",
        "weights": "w.pth",
        "photos": "p.jpg 10x10",
        "settings": "defaults",
        "checks": [{"name": "same classes", "passed": True, "detail": "2/2"}],
        "comparisons": [
            {
                "method": "vanilla",
                "agree": True,
                "classes": [1, 1],
                "pearson": 0.9999,
                "spearman": 0.999,
                "score_difference": 1e-6,
            }
        ],
        "repeats": 2,
        "warmup": 1,
        "timings": [plain, timing],
        "batches": [8],
        "model_ratios": [{"batch": 8, "forward_s": 0.02, "saliency_s": 0.05}],
        "noise_note": "noise note",
        "lever_repeats": 3,
        "levers": [gc.dataclasses.asdict(gc.skipped("TF32", "on / off", "needs cuda"))],
        "errors": [],
        "run_time_s": 90.0,
    }
    text = gc.render(report)
    assert "### GPU check on cpu: the CPU only" in text
    assert "**The device is the CPU**" in text
    assert gc.TORCHSERVE_NOTE in text
    # images/s, latency and best ms, then the stages in ms per batch and the largest share
    assert (
        "| vanilla | 8 | 80.0 | 100 | 90.0 | 50.0 | 0.00 | 40.0 | 10.0 | 0.00 | decode 50% |"
        in text
    )
    # saliency / plain = 80 / 100 images/s, below the 0.85 goal; the model alone 0.02 / 0.05
    assert "| 8 | 100 | 80.0 | 0.80 | not met | 20.0 | 50.0 | 0.40 | decode 50% |" in text
    assert "| TF32 | on / off |  |  |  |  |  | skipped: needs cuda |  |" in text
    assert "Total run time: 1.5 min." in text


def test_ratio_rows_skip_batches_without_both_timings() -> None:
    report = {"timings": [], "model_ratios": [], "batches": [1, 8]}
    assert gc.ratio_rows(report) == []


def test_finite_or_none_makes_json_safe_values() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": 2}], 3: (math.nan,)}
    assert gc.finite_or_none(value) == {"a": None, "b": [1.0, None, {"c": 2}], "3": [None]}


# --- arguments, requests, photos ----------------------------------------------------------------


def test_argument_defaults() -> None:
    args = gc.parse_args([], environ={}, cuda_available=False)
    assert args.device == "cpu"
    assert args.out == Path("out") / "gpu_check"
    assert (args.quick, args.no_compile, args.images, args.weights, args.threads) == (
        False,
        False,
        None,
        None,
        None,
    )
    on_gpu = gc.parse_args(
        [], environ={"OUT": "/x", "SQUEEZENET_WEIGHTS": "w.pth"}, cuda_available=True
    )
    assert (on_gpu.device, on_gpu.out, on_gpu.weights) == ("cuda", Path("/x"), "w.pth")


def test_explicit_arguments_win_over_the_environment(tmp_path: Path) -> None:
    args = gc.parse_args(
        ["--device", "cpu", "--out", str(tmp_path), "--quick", "--weights", "v.pth"],
        environ={"OUT": "/x", "SQUEEZENET_WEIGHTS": "w.pth"},
        cuda_available=True,
    )
    assert (args.device, args.out, args.quick, args.weights) == ("cpu", tmp_path, True, "v.pth")


@pytest.mark.parametrize(
    ("argv", "cuda"),
    [
        (["--device", "cuda"], False),
        (["--device", "tpu"], True),
        (["--images", "/nonexistent"], True),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], cuda: bool) -> None:
    with pytest.raises(SystemExit):
        gc.parse_args(argv, environ={}, cuda_available=cuda)


def test_cuda_with_an_index_is_accepted() -> None:
    assert gc.parse_args(["--device", "cuda:1"], environ={}, cuda_available=True).device == "cuda:1"


def test_modes() -> None:
    assert gc.FULL.batches == (1, 8, 32, 64, 128)
    assert set(gc.QUICK.batches) < set(gc.FULL.batches)
    assert gc.method_settings("vanilla", gc.FULL) == {}
    assert gc.method_settings("smoothgrad", gc.FULL) == {"seed": gc.SEED}
    assert gc.method_settings("vargrad", gc.QUICK, seed=None) == {"samples": gc.QUICK.samples}
    assert gc.method_settings("integrated_gradients", gc.QUICK) == {"steps": gc.QUICK.steps}
    assert gc.method_settings("integrated_gradients", gc.FULL) == {}


def test_request_rows_and_answer_maps() -> None:
    row = gc.request_row(b"\xff\xd8\xff", "smoothgrad", {"seed": 3})
    assert row == {"body": {"image": "/9j/", "method": "smoothgrad", "seed": 3}}
    assert gc.request_row(b"x", gc.PLAIN)["body"] == {"image": "eA==", "saliency": False}
    pixels = np.array([[0, 51], [255, 102]], dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    body = {"saliency": {"png": base64.b64encode(buffer.getvalue()).decode(), "max": 2.0}}
    np.testing.assert_allclose(gc.answer_map(body), [[0.0, 0.4], [2.0, 0.8]])


def test_synthetic_photos_are_structured_jpegs() -> None:
    photos = gc.synthetic_photos()
    assert len(photos) == 3
    for data in photos.values():
        assert gc.is_jpeg(data)
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        assert pixels.shape == (240, 320, 3)
        assert pixels.std() > 20  # not a flat image
    assert gc.synthetic_photos() == photos  # deterministic
    assert not gc.is_jpeg(b"\x89PNG")


def test_default_out_prefers_the_device_runs_folder() -> None:
    assert gc.default_out({"OUT": "/out"}) == Path("/out")
    assert gc.default_out({"OUT": ""}) == Path("out/gpu_check")
    assert gc.default_device(True) == "cuda"
    assert gc.default_device(False) == "cpu"


def test_without_scikit_image_or_a_folder_the_photos_are_synthetic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # the device machine has no scikit-image
    assert gc.project_photos() == {}
    photos, source = gc.load_photos(None)
    assert sorted(photos) == sorted(gc.synthetic_photos())
    assert source.startswith("synthetic")


def test_a_folder_adds_its_images_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    (tmp_path / "cat.JPG").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "weights.pth").write_bytes(b"not an image")
    photos, source = gc.load_photos(tmp_path)
    assert list(photos) == ["cat.JPG"]
    assert source == f"1 from {tmp_path}"
