"""The report's numbers and Markdown from constructed results: the summary's statistics, the
tables (the right numbers in the right rows), the report's parts and the cost."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from saliency_tools.evaluate import cost, tables
from saliency_tools.evaluate.experiment import RANDOM, Results, Settings
from saliency_tools.evaluate.interpretation import CAVEATS, interpretation
from saliency_tools.evaluate.photos import Photos
from saliency_tools.evaluate.report import report_markdown
from saliency_tools.evaluate.summary import sanity, summarise
from saliency_tools.metrics import Curves, Interval, RandomisationStep

NAN = math.nan
SECONDS = {"maps": 3.0, "curves": 12.0, "randomisation": 40.0}


def flat(values: list[float]) -> Curves:
    """One flat curve per photo: its AUC is its value, and it never halves."""
    return Curves(torch.tensor([0.0, 0.5, 1.0]), torch.tensor(values)[:, None].repeat(1, 3))


def constructed_results(randomised: int = 2) -> Results:
    """Three photos; vanilla beats random on both metrics on every photo, gradcam loses. The
    randomisation: conv10 leaves 0.4 and 0.6, conv1 0.3 and a constant map."""
    photos = Photos(["p", "q", "r"], torch.zeros(3, 3, 8, 8), [])
    aucs = {
        "vanilla": ([0.1, 0.2, 0.15], [0.6, 0.7, 0.65]),
        "gradcam": ([0.6, 0.7, 0.65], [0.1, 0.2, 0.15]),
        RANDOM: ([0.3, 0.4, 0.35], [0.3, 0.4, 0.35]),
    }
    one = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    maps = one.repeat(randomised, 1, 1)  # every photo's map alike: across photos, rho = 1
    correlations = ([1.0, 1.0], [0.4, 0.6], [0.3, NAN])
    steps = [
        RandomisationStep(block, maps, torch.tensor(rho[:randomised], dtype=torch.float64))
        for block, rho in zip((None, "classifier.1", "features.0"), correlations, strict=True)
    ]
    return Results(
        photos,
        ["cat", "dog", "cup"],
        {m: flat(deletion) for m, (deletion, _) in aucs.items()},
        {m: flat(insertion) for m, (_, insertion) in aucs.items()},
        {"vanilla": steps, "gradcam": steps},
        Settings(),
        dict(SECONDS),
    )


def test_summarise_pairs_each_method_with_the_random_map_photo_by_photo() -> None:
    summary = summarise(constructed_results())
    assert summary.count == 3
    assert summary.deletion["vanilla"].mean == pytest.approx(0.15)
    # Gains are oriented so that > 0 is better, on both metrics.
    vanilla, gradcam = summary.deletion_gain["vanilla"], summary.deletion_gain["gradcam"]
    assert vanilla.mean == pytest.approx(0.2) and vanilla.low == pytest.approx(0.2)  # sd 0
    assert gradcam.mean == pytest.approx(-0.3)
    assert summary.insertion_gain["vanilla"].mean == pytest.approx(0.3)
    assert summary.deletion_wins == {"vanilla": 3, "gradcam": 0}
    assert summary.insertion_wins == {"vanilla": 3, "gradcam": 0}
    assert RANDOM not in summary.deletion_gain
    assert summary.half_lives["vanilla"] == pytest.approx(1.0)  # flat curves never halve
    checked = summary.sanity["vanilla"]
    assert (checked.after_classifier, checked.all_random, checked.lowest) == pytest.approx(
        (0.5, 0.3, 0.3)
    )
    assert checked.undefined == 1 and checked.across == pytest.approx(1.0)  # the same maps


def test_the_half_lives_come_from_the_deletion_curves() -> None:
    fractions = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    # Photo 1 halves at 0.5, photo 2 at 0.25: 0.375; the insertion curves never halve.
    deletion = Curves(fractions, torch.tensor([[1.0, 0.8, 0.5, 0.2, 0.0], [0.6, 0.2, 0, 0, 0]]))
    insertion = Curves(fractions, torch.ones(2, 5))
    steps = [RandomisationStep(None, torch.rand(1, 4, 4), torch.ones(1, dtype=torch.float64))] * 2
    results = Results(
        Photos(["a", "b"], torch.zeros(2, 3, 8, 8), []),
        ["x", "y"],
        {"vanilla": deletion, RANDOM: deletion},
        {"vanilla": insertion, RANDOM: insertion},
        {"vanilla": steps},
        Settings(),
    )
    assert summarise(results).half_lives == pytest.approx({"vanilla": 0.375, RANDOM: 0.375})


def test_sanity_counts_constant_maps_and_keeps_the_lowest_defined_mean() -> None:
    ones = torch.ones(2, dtype=torch.float64)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    steps = [
        RandomisationStep(None, maps, ones),
        RandomisationStep("a", maps, torch.tensor([0.2, NAN], dtype=torch.float64)),
        RandomisationStep("b", maps, torch.tensor([NAN, NAN], dtype=torch.float64)),
    ]
    checked = sanity(steps)
    assert checked.after_classifier == pytest.approx(0.2) and math.isnan(checked.all_random)
    assert checked.lowest == pytest.approx(0.2) and checked.undefined == 3


def test_mean_sd_of_known_values_and_of_undefined_correlations() -> None:
    assert tables.mean_sd(torch.tensor([1.0, 2.0, 3.0])) == "2.000 ± 1.000"
    assert tables.mean_sd(torch.tensor([0.5])) == "0.500 ± 0.000"
    assert tables.mean_sd(torch.tensor([1.0, NAN, 3.0])) == (
        "2.000 ± 1.414 (1 constant map left out)"
    )
    assert tables.mean_sd(torch.tensor([1.0, NAN, NAN])) == (
        "1.000 ± 0.000 (2 constant maps left out)"
    )
    assert tables.mean_sd(torch.tensor([NAN, NAN])) == "undefined (constant maps)"


def test_intervals_in_words() -> None:
    assert tables.interval_text(Interval(0.25, 0.2, 0.3, 4)) == "0.250 [0.200, 0.300]"
    assert tables.interval_text(Interval(-0.05, -0.1, 0.0, 4), signed=True) == (
        "-0.050 [-0.100, +0.000]"
    )
    assert tables.interval_text(Interval(0.25, NAN, NAN, 1)) == "0.250 (one photo: no interval)"
    assert tables.interval_text(Interval(NAN, NAN, NAN, 0)) == "undefined"


def test_layers_go_by_the_paper_s_names() -> None:
    assert tables.layer_name(None) == "none (trained model)"
    assert tables.layer_name("classifier.1") == "conv10"
    assert tables.layer_name("features.0") == "conv1"
    assert tables.layer_name("head.7") == "head.7"  # a layer SqueezeNet does not have


def test_the_summary_table_has_each_method_s_numbers_in_its_row() -> None:
    # Hand-computed: AUCs 0.1, 0.2, 0.15 -> mean 0.15, sd 0.05, t(2) = 4.303: +- 0.124.
    lines = tables.summary_table(summarise(constructed_results())).splitlines()
    assert lines[0].startswith("| method | deletion AUC (lower is better) |")
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2:] == [
        "| vanilla | 0.150 [0.026, 0.274] | +0.200 [+0.200, +0.200], 3/3 "
        "| 0.650 [0.526, 0.774] | +0.300 [+0.300, +0.300], 3/3 | 0.50 / 0.30 |",
        "| gradcam | 0.650 [0.526, 0.774] | -0.300 [-0.300, -0.300], 0/3 "
        "| 0.150 [0.026, 0.274] | -0.200 [-0.200, -0.200], 0/3 | 0.50 / 0.30 |",
        "| random | 0.350 [0.226, 0.474] | (the floor) | 0.350 [0.226, 0.474] | (the floor) "
        "| (independent of the model) |",
    ]


def test_the_photos_table_has_one_row_per_photo_and_a_cell_per_method() -> None:
    assert tables.photos_table(constructed_results()).splitlines() == [
        "| photo (class) | vanilla | gradcam | random |",
        "|---|---|---|---|",
        "| p (cat) | 0.100 / 0.600 | 0.600 / 0.100 | 0.300 / 0.300 |",
        "| q (dog) | 0.200 / 0.700 | 0.700 / 0.200 | 0.400 / 0.400 |",
        "| r (cup) | 0.150 / 0.650 | 0.650 / 0.150 | 0.350 / 0.350 |",
    ]


def test_the_randomisation_table_has_one_row_per_step_and_the_cross_photo_reference() -> None:
    results = constructed_results()
    assert tables.randomisation_table(results, summarise(results)).splitlines() == [
        "| randomised down to | vanilla | gradcam |",
        "|---|---|---|",
        "| none (trained model) | 1.000 ± 0.000 | 1.000 ± 0.000 |",
        "| conv10 | 0.500 ± 0.141 | 0.500 ± 0.141 |",
        "| conv1 | 0.300 ± 0.000 (1 constant map left out) "
        "| 0.300 ± 0.000 (1 constant map left out) |",
        "| *reference: trained maps of two different photos* | 1.000 | 1.000 |",
    ]
    one = constructed_results(randomised=1)  # one photo: no pair to compare
    assert "reference" not in tables.randomisation_table(one, summarise(one))


def test_the_report_puts_the_setup_tables_reading_and_cost_in_order() -> None:
    results = constructed_results()
    summary = summarise(results)
    report = report_markdown(results, summary, "python scripts/evaluate.py --seed 3", 90.0, 80.0)
    assert report.startswith(
        "# Faithfulness of the saliency maps\n\nGenerated by `python scripts/evaluate.py "
        '--seed 3` on the CPU (1.5 min; see "Cost" below).'
    )
    assert "Photos (3; explained class: the model's prediction): p (cat), q (dog), r (cup)." in (
        report
    )
    assert "896 pixels per step\n  (2 steps)" in report  # the constructed curves' two steps
    assert "on the first 2 photos:" in report and "mean ± sd over 2 photos:" in report
    parts = [
        "## Summary",
        tables.summary_table(summary),
        "## What it means",
        interpretation(summary),
        CAVEATS,
        "](faithfulness.png)",
        "## Per photo",
        tables.photos_table(results),
        "## Model-parameter randomisation",
        tables.randomisation_table(results, summary),
        "## Cost",
        cost.timing_text(results, 90.0, 80.0, NAN, cost.work(results.settings, 2, 2)),
    ]
    at = [report.index(part) for part in parts]
    assert at == sorted(at)
    one = constructed_results(randomised=1)
    assert "on the first 1 photo:" in report_markdown(one, summarise(one), "c", 60.0, 60.0)


def test_the_cost_is_counted_from_the_settings() -> None:
    settings = Settings(samples=25, steps=32)
    counted = cost.work(settings, steps=56, blocks=10)
    # the vanilla job (Grad-CAM takes its forward pass), shared noise, IG
    assert counted.gradients == 1 + 25 + 32
    assert counted.forwards == 1 + 3 + 7 * 2 * 57  # prediction, clean and baseline, curves
    assert (counted.randomised_gradients, counted.randomised_forwards) == (11 * 58, 11 * 3)
    assert counted.quiet_seconds(0, 0) == 0
    assert counted.quiet_seconds(2, 1) == pytest.approx(
        (2 * 58 + 11 * 58) * cost.QUIET_GRADIENT_S + (2 * 802 + 11 * 3) * cost.QUIET_FORWARD_S
    )


def test_timing_extrapolates_the_measured_pace_to_100_photos() -> None:
    results = constructed_results()  # 3 photos, 2 of them randomised, 8 by default
    counted = cost.work(results.settings, steps=56, blocks=2)
    text = cost.timing_text(results, 65.0, 100.0, 1.5, counted)
    # 3 photos: 5 s each; 20 s per randomised photo; 65 - 55 = 10 s of loading.
    # 100 photos, 8 randomised: (500 + 160 + 10) / 60 = 11.2 min.
    assert "5.0 s per photo (1.0 s maps, 4.0 s curves), 20.0 s per photo randomised" in text
    assert "(2 photos) and 10 s of loading" in text
    assert "100 photos, 8 of them randomised, take 11.2 min" in text
    assert "load average of 1.5" in text
    assert f"{counted.quiet_seconds(100, 8) / 60:.1f} min for 100 photos" in text
    few = dataclasses.replace(results, settings=Settings(randomisation_photos=1))
    assert "100 photos, 1 of them randomised, take 8.8 min" in (
        cost.timing_text(few, 65.0, 100.0, 1.5, counted)  # (500 + 20 + 10) / 60
    )
