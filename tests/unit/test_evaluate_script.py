"""scripts/evaluate.py: the experiment on a tiny budget, and its statistics and prose on
constructed numbers, one test per branch of what the report says."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from PIL import Image

from saliency_service.methods import METHODS, ExplainContext, Job, explain
from saliency_service.model import CAM_LAYER
from saliency_tools import evaluate
from saliency_tools.metrics import Curves, Interval, RandomisationStep

NAN = math.nan
ALL = (*evaluate.METHOD_NAMES, evaluate.RANDOM)


@pytest.fixture(scope="module")
def photos() -> evaluate.Photos:
    encoded = evaluate.skimage_photos()
    return evaluate.prepare({name: encoded[name] for name in ("chelsea", "coffee")})


@pytest.fixture(scope="module")
def served(model: torch.nn.Module) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last)


TINY = evaluate.Settings(
    samples=2, steps=2, pixels_per_step=224 * 224 // 4, randomisation_photos=2, batch_size=8
)


def test_the_skimage_photos_are_the_published_natural_ones() -> None:
    encoded = evaluate.skimage_photos()
    assert list(encoded) == list(evaluate.SKIMAGE_PHOTOS)
    photos = evaluate.prepare(encoded)
    assert photos.inputs.shape == (len(encoded), 3, 224, 224)  # grayscale ones come out RGB


def test_a_folder_gives_its_images_in_name_order_and_an_empty_one_stops(tmp_path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(name.encode())
    assert list(evaluate.folder_photos(tmp_path)) == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no image files"):
        evaluate.folder_photos(empty)


def test_the_command_line_defaults_are_the_settings_and_images_names_a_folder(tmp_path) -> None:
    assert evaluate.settings_from(evaluate.parse_arguments([])) == evaluate.Settings()
    args = evaluate.parse_arguments(["--images", str(tmp_path), "--samples", "5", "--steps", "8"])
    assert args.images == tmp_path
    settings = evaluate.settings_from(args)
    assert (settings.samples, settings.steps) == (5, 8)
    # The service's defaults are the experiment's: the report evaluates what is served.
    assert settings.noise == METHODS["smoothgrad"].defaults()["noise"]
    assert evaluate.Settings().samples == METHODS["smoothgrad"].defaults()["samples"]
    assert evaluate.Settings().steps == METHODS["integrated_gradients"].defaults()["steps"]


def test_every_map_is_the_one_the_service_computes_for_that_method(exact_model, photos) -> None:
    """One shared set of noisy copies gives SmoothGrad, SmoothGrad-Squared and VarGrad: each
    equals the engine's own answer for that method with the same seed (float64: exact)."""
    inputs = photos.inputs.double()
    targets = torch.tensor([3, 7])
    settings = evaluate.Settings(samples=3, steps=3, seed=5, batch_size=4)
    maps = evaluate.explain_all(exact_model, inputs, targets, settings, first=10)
    assert list(maps) == list(evaluate.METHOD_NAMES)
    context = ExplainContext(
        chunk_size=4,
        black=torch.zeros(3, 1, 1, dtype=torch.float64),
        cam_layer=exact_model.get_submodule(CAM_LAYER),
        cam_layer_name=CAM_LAYER,
    )
    for name in evaluate.METHOD_NAMES:
        method = METHODS[name]
        defaults = method.defaults()  # the service's, but for the budget and a fixed seed
        for n in range(2):
            chosen = {**defaults, "samples": 3, "steps": 3, "seed": 5 + 10 + n}  # first + n
            options = {key: chosen[key] for key in defaults}
            job = Job(inputs[n], method, options, int(targets[n]), "score")
            [expected] = explain(exact_model, [job], context)
            torch.testing.assert_close(maps[name][n], expected.map.float(), msg=name)


def test_random_maps_depend_on_the_photo_not_on_the_chunk() -> None:
    whole = evaluate.random_maps(5, (4, 4), seed=2)
    torch.testing.assert_close(evaluate.random_maps(2, (4, 4), seed=2, first=3), whole[3:])
    assert not torch.equal(whole[0], whole[1])


def test_curves_of_all_methods_at_once_equal_each_method_alone(served, photos) -> None:
    targets = torch.tensor([5, 9])
    generator = torch.Generator().manual_seed(4)
    maps = {name: torch.rand(2, 224, 224, generator=generator) for name in ("a", "b", "c")}
    settings = evaluate.Settings(pixels_per_step=224 * 224 // 4, batch_size=7)
    deletion, insertion = evaluate.curves_of(served, photos.inputs, maps, targets, settings)
    assert list(deletion) == list(insertion) == ["a", "b", "c"]
    for name in maps:
        alone, _ = evaluate.curves_of(served, photos.inputs, {name: maps[name]}, targets, settings)
        assert deletion[name].probabilities.shape == (2, 5)
        torch.testing.assert_close(
            deletion[name].probabilities, alone[name].probabilities, atol=1e-5, rtol=1e-4
        )


def test_a_small_run_gives_every_method_its_curves_and_its_randomisation(
    served, labels, photos, tmp_path
):
    results = evaluate.evaluate(served, photos, labels, TINY)

    assert list(results.deletion) == list(results.insertion) == list(ALL)
    assert results.deletion[evaluate.RANDOM].probabilities.shape == (2, 5)
    assert list(results.randomisation) == list(evaluate.METHOD_NAMES)
    for steps in results.randomisation.values():
        assert [step.block for step in steps][:2] == [None, "classifier.1"] and len(steps) == 11
        torch.testing.assert_close(steps[0].correlations, torch.ones(2, dtype=torch.float64))
    assert set(results.seconds) == {"maps", "curves", "randomisation"}

    summary = evaluate.summarise(results)
    report = evaluate.report_markdown(results, summary, "python scripts/evaluate.py", 60.0, 90.0)
    for name in ALL:
        assert f"| {name} |" in report
    for layer in ("| conv10 |", "| conv1 |", "| none (trained model) |"):
        assert layer in report
    assert "chelsea" in report and "faithfulness.png" in report
    path = tmp_path / "figure.png"
    evaluate.figure(results, summary).save(path)
    with Image.open(path) as figure:
        assert figure.width > 1100 and figure.height > 900


def flat(values: list[float]) -> Curves:
    """One flat curve per photo: its AUC is its value, and it never halves."""
    return Curves(torch.tensor([0.0, 0.5, 1.0]), torch.tensor(values)[:, None].repeat(1, 3))


def constructed_results(randomised: int = 2) -> evaluate.Results:
    """Three photos; vanilla beats random on both metrics on every photo, gradcam loses."""
    photos = evaluate.Photos(["p", "q", "r"], torch.zeros(3, 3, 8, 8), [])
    aucs = {
        "vanilla": ([0.1, 0.2, 0.15], [0.6, 0.7, 0.65]),
        "gradcam": ([0.6, 0.7, 0.65], [0.1, 0.2, 0.15]),
        evaluate.RANDOM: ([0.3, 0.4, 0.35], [0.3, 0.4, 0.35]),
    }
    curves = {m: (flat(deletion), flat(insertion)) for m, (deletion, insertion) in aucs.items()}
    one = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    maps = one.repeat(randomised, 1, 1)  # every photo's map alike: across photos, rho = 1
    ones = torch.ones(randomised, dtype=torch.float64)
    steps = [
        RandomisationStep(None, maps, ones),
        RandomisationStep("classifier.1", maps, ones * 0.5),
        RandomisationStep("features.0", maps, ones * 0.3),
    ]
    return evaluate.Results(
        photos,
        ["cat", "dog", "cup"],
        {m: pair[0] for m, pair in curves.items()},
        {m: pair[1] for m, pair in curves.items()},
        {"vanilla": steps, "gradcam": steps},
        evaluate.Settings(),
    )


def test_summarise_pairs_each_method_with_the_random_map_photo_by_photo() -> None:
    summary = evaluate.summarise(constructed_results())
    assert summary.count == 3
    assert summary.deletion["vanilla"].mean == pytest.approx(0.15)
    # Gains are oriented so that > 0 is better, on both metrics.
    vanilla, gradcam = summary.deletion_gain["vanilla"], summary.deletion_gain["gradcam"]
    assert vanilla.mean == pytest.approx(0.2) and vanilla.low == pytest.approx(0.2)  # sd 0
    assert gradcam.mean == pytest.approx(-0.3)
    assert summary.insertion_gain["vanilla"].mean == pytest.approx(0.3)
    assert summary.deletion_wins == {"vanilla": 3, "gradcam": 0}
    assert summary.insertion_wins == {"vanilla": 3, "gradcam": 0}
    assert evaluate.RANDOM not in summary.deletion_gain
    assert summary.half_lives["vanilla"] == pytest.approx(1.0)  # flat curves never halve
    sanity = summary.sanity["vanilla"]
    assert (sanity.after_classifier, sanity.all_random, sanity.lowest) == pytest.approx(
        (0.5, 0.3, 0.3)
    )
    assert sanity.undefined == 0 and sanity.across == pytest.approx(1.0)  # the same maps


def test_sanity_counts_constant_maps_and_keeps_the_lowest_defined_mean() -> None:
    ones = torch.ones(2, dtype=torch.float64)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    steps = [
        RandomisationStep(None, maps, ones),
        RandomisationStep("a", maps, torch.tensor([0.2, NAN], dtype=torch.float64)),
        RandomisationStep("b", maps, torch.tensor([NAN, NAN], dtype=torch.float64)),
    ]
    sanity = evaluate.sanity(steps)
    assert sanity.after_classifier == pytest.approx(0.2) and math.isnan(sanity.all_random)
    assert sanity.lowest == pytest.approx(0.2) and sanity.undefined == 3


def hand_summary(**changes) -> evaluate.Summary:
    """A summary with two methods and random, every number chosen by hand."""

    def i(mean: float, low: float, high: float, count: int = 10) -> Interval:
        return Interval(mean, low, high, count)

    base = evaluate.Summary(
        count=10,
        deletion={"a": i(0.05, 0.04, 0.06), "b": i(0.07, 0.05, 0.09), "random": i(0.08, 0, 1)},
        insertion={"a": i(0.40, 0.3, 0.5), "b": i(0.25, 0.2, 0.3), "random": i(0.2, 0.1, 0.3)},
        deletion_gain={"a": i(0.032, 0.012, 0.052), "b": i(0.012, -0.01, 0.03)},
        insertion_gain={"a": i(0.20, 0.15, 0.25), "b": i(-0.05, -0.08, -0.02)},
        deletion_wins={"a": 9, "b": 6},
        insertion_wins={"a": 10, "b": 2},
        half_lives={"a": 0.02, "b": 0.03, "random": 0.03},
        sanity={
            "a": evaluate.Sanity(0.3, 0.25, 0.25, 0, 0.2),
            "b": evaluate.Sanity(0.9, 0.85, 0.85, 0, 0.1),
        },
    )
    return dataclasses.replace(base, **changes)


def test_against_random_groups_the_methods_that_beat_tie_and_lose() -> None:
    insertion = evaluate.against_random(hand_summary(), "insertion")
    assert "a (+0.200 [+0.150, +0.250], +100%, 10/10 photos) beats it" in insertion
    assert "b (-0.050 [-0.080, -0.020], -25%, 2/10 photos) does worse" in insertion
    assert "higher" in insertion and "cannot be told apart" not in insertion
    deletion = evaluate.against_random(hand_summary(), "deletion")
    assert "a (+0.032 [+0.012, +0.052], +40%, 9/10 photos) beats it" in deletion
    assert "b (+0.012 [-0.010, +0.030], +15%, 6/10 photos) cannot be told apart" in deletion
    assert "lower" in deletion and "worse" not in deletion


def test_verdicts_and_intervals_in_words() -> None:
    assert evaluate.verdict(Interval(0.1, 0.05, 0.15, 5)) == "beats"
    assert evaluate.verdict(Interval(-0.1, -0.15, -0.05, 5)) == "loses"
    assert evaluate.verdict(Interval(0.1, -0.05, 0.25, 5)) == "ties"
    assert evaluate.verdict(Interval(0.1, NAN, NAN, 1)) == "ties"  # one photo decides nothing
    assert evaluate.interval_text(Interval(0.25, 0.2, 0.3, 4)) == "0.250 [0.200, 0.300]"
    assert evaluate.interval_text(Interval(-0.05, -0.1, 0.0, 4), signed=True) == (
        "-0.050 [-0.100, +0.000]"
    )
    assert evaluate.interval_text(Interval(0.25, NAN, NAN, 1)) == "0.250 (one photo: no interval)"
    assert evaluate.interval_text(Interval(NAN, NAN, NAN, 0)) == "undefined"
    assert evaluate.listing(["a"]) == "a" and evaluate.listing(["a", "b", "c"]) == "a, b and c"


def test_mean_sd_of_known_values_and_of_undefined_correlations() -> None:
    assert evaluate.mean_sd(torch.tensor([1.0, 2.0, 3.0])) == "2.000 ± 1.000"
    assert evaluate.mean_sd(torch.tensor([0.5])) == "0.500 ± 0.000"
    assert evaluate.mean_sd(torch.tensor([1.0, NAN, 3.0])) == (
        "2.000 ± 1.414 (1 constant map left out)"
    )
    assert evaluate.mean_sd(torch.tensor([1.0, NAN, NAN])).endswith("(2 constant maps left out)")
    assert evaluate.mean_sd(torch.tensor([NAN, NAN])) == "undefined (constant maps)"


def test_collapse_says_whether_deletion_can_separate_the_methods() -> None:
    early = evaluate.collapse(hand_summary())
    assert early.startswith("Every deletion curve collapses early")
    assert "2.0% (a), 3.0% (b), 3.0% (random)" in early
    assert "insertion separates the methods better" in early  # spread 0.20 against 0.03
    flat_insertion = {m: Interval(0.3, 0.2, 0.4, 10) for m in ("a", "b", "random")}
    assert "insertion separates" not in evaluate.collapse(hand_summary(insertion=flat_insertion))
    late = evaluate.collapse(hand_summary(half_lives={"a": 0.12, "b": 0.3, "random": 0.4}))
    assert late == "The probability halves once 12.0% (a), 30.0% (b), 40.0% (random) of the " + (
        "pixels are deleted."
    )


def test_sanity_text_for_each_outcome_of_the_randomisation_test() -> None:
    passes = evaluate.sanity_text("a", evaluate.Sanity(0.3, 0.25, 0.25, 0, 0.2))
    assert "falls from 1 to 0.30" in passes and "depends on the learned weights" in passes
    assert "close to the 0.20" in passes and "left out" not in passes
    below = evaluate.sanity_text("a", evaluate.Sanity(0.6, 0.4, 0.3, 0, 0.55))
    assert "no more than the 0.55" in below and "image-independent pattern" in below
    fails = evaluate.sanity_text("b", evaluate.Sanity(0.9, 0.85, 0.85, 0, 0.1))
    assert "fails the sanity check" in fails and "well above the 0.10" in fails
    low = evaluate.sanity_text("c", evaluate.Sanity(0.1, 0.05, 0.05, 0, 0.2))
    assert "0.20" not in low  # nothing remains to compare with the cross-photo reference
    alone = evaluate.sanity_text("d", evaluate.Sanity(0.5, 0.5, 0.5, 0, NAN))  # one photo
    assert "different photos" not in alone
    gaps = evaluate.sanity_text("e", evaluate.Sanity(0.4, 0.3, 0.3, 3, 0.2))
    assert "3 randomised maps came out constant" in gaps
    vanished = evaluate.sanity_text("f", evaluate.Sanity(NAN, NAN, NAN, 20, 0.2))
    assert "every randomised model gives a constant map" in vanished


def test_interpretation_puts_the_parts_in_order_and_warns_about_one_photo() -> None:
    text = evaluate.interpretation(hand_summary())
    first, *paragraphs = text.split("\n\n")
    assert first.startswith("Deletion orders the methods a < b < random (lower is better), ")
    assert "insertion a > b > random" in first
    assert first.index("On insertion") < first.index("On deletion") < first.index("collapses")
    assert [p.split(":")[0] for p in paragraphs] == ["a", "b"]
    assert "With one photo" not in text
    assert "With one photo there is no interval" in evaluate.interpretation(hand_summary(count=1))


def test_the_cost_is_counted_from_the_settings() -> None:
    settings = evaluate.Settings(samples=25, steps=32)
    cost = evaluate.work(settings, steps=56, blocks=10)
    # the vanilla job (Grad-CAM takes its forward pass), shared noise, IG
    assert cost.gradients == 1 + 25 + 32
    assert cost.forwards == 1 + 3 + 7 * 2 * 57  # prediction, clean and baseline passes, curves
    assert (cost.randomised_gradients, cost.randomised_forwards) == (11 * 58, 11 * 3)
    assert cost.quiet_seconds(0, 0) == 0
    assert cost.quiet_seconds(2, 1) == pytest.approx(
        (2 * 58 + 11 * 58) * evaluate.QUIET_GRADIENT_S
        + (2 * 802 + 11 * 3) * evaluate.QUIET_FORWARD_S
    )


def test_timing_extrapolates_the_measured_pace_to_100_photos() -> None:
    results = constructed_results()  # 3 photos, 2 of them randomised, 8 by default
    timed = dataclasses.replace(
        results, seconds={"maps": 3.0, "curves": 12.0, "randomisation": 40.0}
    )
    cost = evaluate.work(results.settings, steps=56, blocks=2)
    text = evaluate.timing_text(timed, 65.0, 100.0, 1.5, cost)
    # 3 photos: 5 s each; 20 s per randomised photo; 65 - 55 = 10 s of loading.
    # 100 photos, 8 randomised: (500 + 160 + 10) / 60 = 11.2 min.
    assert "5.0 s per photo (1.0 s maps, 4.0 s curves), 20.0 s per photo randomised" in text
    assert "(2 photos) and 10 s of loading" in text
    assert "100 photos, 8 of them randomised, take 11.2 min" in text
    assert "load average of 1.5" in text
    assert f"{cost.quiet_seconds(100, 8) / 60:.1f} min for 100 photos" in text


def test_photo_chunks_join_in_order_with_each_photo_keeping_its_seed(
    served, labels, photos, monkeypatch
):
    monkeypatch.setattr(evaluate, "PHOTO_CHUNK", 1)  # two chunks of one photo
    settings = dataclasses.replace(TINY, randomisation_photos=1)
    results = evaluate.evaluate(served, photos, labels, settings)
    with torch.no_grad():
        targets = served(photos.inputs).argmax(dim=1)
    maps = {evaluate.RANDOM: evaluate.random_maps(2, (224, 224), settings.seed)}
    deletion, insertion = evaluate.curves_of(served, photos.inputs, maps, targets, settings)
    for got, expected in ((results.deletion, deletion), (results.insertion, insertion)):
        torch.testing.assert_close(
            got[evaluate.RANDOM].probabilities, expected[evaluate.RANDOM].probabilities
        )
    assert results.randomisation["vanilla"][0].maps.shape == (1, 224, 224)


def test_a_new_report_keeps_the_hand_written_part(tmp_path) -> None:
    report = tmp_path / "faithfulness.md"
    hand = f"{evaluate.HAND_WRITTEN}, kept -->\n\n## In short\nprose\n"
    report.write_text("# old generated report\n\n" + hand)
    evaluate.write_report(report, "# new report\n")
    assert report.read_text() == "# new report\n\n" + hand
    fresh = tmp_path / "fresh.md"
    evaluate.write_report(fresh, "# only generated\n")
    assert fresh.read_text() == "# only generated\n"
