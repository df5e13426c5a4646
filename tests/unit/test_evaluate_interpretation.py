"""The report's reading of its numbers, one test per outcome it can state: summaries are built
by hand, so every number in the prose is known."""

from __future__ import annotations

import dataclasses
import math

import pytest

from saliency_tools.evaluate import interpretation as reading
from saliency_tools.evaluate.summary import Sanity, Summary
from saliency_tools.metrics import Interval

NAN = math.nan


def i(mean: float, low: float, high: float, count: int = 10) -> Interval:
    return Interval(mean, low, high, count)


def hand_summary(**changes) -> Summary:
    """Two methods and random: on insertion ``a`` beats random and ``b`` does worse; on deletion
    ``a`` beats it and ``b`` cannot be told apart; every curve halves within 3% of the pixels."""
    base = Summary(
        count=10,
        deletion={"a": i(0.05, 0.04, 0.06), "b": i(0.07, 0.05, 0.09), "random": i(0.08, 0, 1)},
        insertion={"a": i(0.40, 0.3, 0.5), "b": i(0.25, 0.2, 0.3), "random": i(0.2, 0.1, 0.3)},
        deletion_gain={"a": i(0.032, 0.012, 0.052), "b": i(0.012, -0.01, 0.03)},
        insertion_gain={"a": i(0.20, 0.15, 0.25), "b": i(-0.05, -0.08, -0.02)},
        deletion_wins={"a": 9, "b": 6},
        insertion_wins={"a": 10, "b": 2},
        half_lives={"a": 0.02, "b": 0.03, "random": 0.03},
        sanity={"a": Sanity(0.3, 0.25, 0.25, 0, 0.2), "b": Sanity(0.9, 0.85, 0.85, 0, 0.1)},
    )
    return dataclasses.replace(base, **changes)


def on_insertion(gains: dict[str, Interval], floor: float = 0.2) -> str:
    """``against_random`` on insertion for these gains, random's AUC ``floor``."""
    summary = hand_summary(
        insertion={"random": i(floor, 0.1, 0.3)},
        insertion_gain=gains,
        insertion_wins=dict.fromkeys(gains, 7),
    )
    return reading.against_random(summary, "insertion")


@pytest.mark.parametrize(
    ("gain", "expected"),
    [
        (i(0.1, 0.05, 0.15), "beats"),  # the whole interval above 0
        (i(-0.1, -0.15, -0.05), "loses"),  # the whole interval below 0
        (i(0.1, -0.05, 0.25), "ties"),  # within the noise
        (i(0.1, NAN, NAN, 1), "ties"),  # one photo decides nothing
    ],
)
def test_the_verdict_is_where_the_interval_of_the_gain_lies(gain, expected) -> None:
    assert reading.verdict(gain) == expected


def test_a_method_whose_interval_is_above_zero_beats_random() -> None:
    text = on_insertion({"a": i(0.2, 0.15, 0.25)})
    assert text == (
        "On insertion (gain = how much higher the method's AUC is than the random map's 0.200, "
        "95% interval, share of random's AUC, photos won): a (+0.200 [+0.150, +0.250], +100%, "
        "7/10 photos) beats it."
    )


def test_a_method_within_the_noise_cannot_be_told_apart_from_random() -> None:
    text = on_insertion({"b": i(0.01, -0.02, 0.04)})
    assert text.endswith(
        ": b (+0.010 [-0.020, +0.040], +5%, 7/10 photos) cannot be told apart from it at this "
        "number of photos."
    )


def test_a_method_whose_interval_is_below_zero_does_worse() -> None:
    text = on_insertion({"c": i(-0.05, -0.08, -0.02)})
    assert text.endswith(": c (-0.050 [-0.080, -0.020], -25%, 7/10 photos) does worse.")


def test_groups_list_the_best_first_and_agree_in_number() -> None:
    gains = {
        "low": i(0.1, 0.05, 0.15),
        "high": i(0.3, 0.2, 0.4),
        "tie": i(0.0, -0.1, 0.1),
        "bad": i(-0.1, -0.2, -0.05),
        "worse": i(-0.2, -0.3, -0.1),
    }
    text = on_insertion(gains)
    beats, ties, loses = text.split(": ", 1)[1].split("; ")
    assert beats.startswith("high (") and " and low (" in beats and beats.endswith(") beat it")
    assert ties.startswith("tie (")
    assert loses.startswith("bad (") and " and worse (" in loses and loses.endswith(") do worse.")


def test_without_a_positive_floor_no_share_is_given() -> None:
    text = on_insertion({"a": i(0.2, 0.15, 0.25)}, floor=0.0)
    assert "a (+0.200 [+0.150, +0.250], 7/10 photos) beats it" in text


def test_deletion_gains_read_as_lower_is_better() -> None:
    text = reading.against_random(hand_summary(), "deletion")
    assert text.startswith("On deletion (gain = how much lower the method's AUC is than the ")
    assert "a (+0.032 [+0.012, +0.052], +40%, 9/10 photos) beats it" in text
    assert "b (+0.012 [-0.010, +0.030], +15%, 6/10 photos) cannot be told apart" in text


def test_listing_joins_with_commas_and_a_final_and() -> None:
    assert reading.listing(["a"]) == "a"
    assert reading.listing(["a", "b"]) == "a and b"
    assert reading.listing(["a", "b", "c"]) == "a, b and c"


def test_curves_that_halve_early_say_deletion_cannot_separate_and_insertion_does() -> None:
    early = reading.collapse(hand_summary())  # insertion spread 0.20 against deletion's 0.03
    assert early == (
        "Every deletion curve collapses early: the probability halves once 2.0% (a), 3.0% (b), "
        "3.0% (random) of the pixels are deleted, whatever their order, so the deletion AUCs are "
        "small, and insertion separates the methods better."
    )


def test_early_halving_with_insertion_no_better_says_only_the_collapse() -> None:
    flat_insertion = {m: i(0.3, 0.2, 0.4) for m in ("a", "b", "random")}
    text = reading.collapse(hand_summary(insertion=flat_insertion))
    assert text.startswith("Every deletion curve collapses early")
    assert text.endswith("so the deletion AUCs are small.")


def test_curves_that_halve_late_state_the_half_lives_only() -> None:
    late = reading.collapse(hand_summary(half_lives={"a": 0.12, "b": 0.03, "random": 0.04}))
    assert late == (
        "The probability halves once 12.0% (a), 3.0% (b), 4.0% (random) of the pixels are deleted."
    )


@pytest.mark.parametrize(
    ("sanity", "present", "absent"),
    [
        # Falls below PASS_BELOW, ends 0.05 above the cross-photo 0.20 (within CLOSE).
        (
            Sanity(0.3, 0.25, 0.25, 0, 0.2),
            ["falls from 1 to 0.30", "is 0.25 with every layer random (lowest 0.25): the map "
             "depends on the learned weights.", "close to the 0.20", "image-independent"],
            ["left out", "fails"],
        ),
        # Ends at or below the cross-photo correlation.
        (
            Sanity(0.6, 0.4, 0.3, 0, 0.55),
            ["depends on the learned weights", "no more than the 0.55", "image-independent"],
            ["close to", "well above"],
        ),
        # Never falls below PASS_BELOW, ends far above the cross-photo correlation.
        (
            Sanity(0.9, 0.85, 0.85, 0, 0.1),
            ["fails the sanity check", "well above the 0.10", "reflects the image more"],
            ["depends on the learned weights", "image-independent"],
        ),
        # Little remains (<= 0.2): nothing to compare with the cross-photo reference.
        (Sanity(0.1, 0.05, 0.05, 0, 0.2), ["depends on the learned weights"], ["0.20"]),
        # One photo: no cross-photo reference.
        (Sanity(0.5, 0.5, 0.5, 0, NAN), ["depends on the learned weights"], ["different"]),
        # Some randomised maps constant: counted, in the singular or the plural.
        (Sanity(0.4, 0.3, 0.3, 3, 0.2), ["(3 randomised maps came out constant"], []),
        (Sanity(0.4, 0.3, 0.3, 1, 0.2), ["(1 randomised map came out constant"], ["maps came"]),
        # Every randomised map constant: no correlation at all.
        (
            Sanity(NAN, NAN, NAN, 20, 0.2),
            ["every randomised model gives a constant map", "depends on them, trivially"],
            ["falls from 1"],
        ),
    ],
)  # fmt: skip
def test_each_outcome_of_the_randomisation_test_in_words(sanity, present, absent) -> None:
    text = reading.sanity_text("m", sanity)
    assert text.startswith("m: ")
    for phrase in present:
        assert phrase in text
    for phrase in absent:
        assert phrase not in text


def test_the_reading_orders_the_methods_then_compares_them_with_random() -> None:
    summary = hand_summary()
    first, *paragraphs = reading.interpretation(summary).split("\n\n")
    assert first.startswith(
        "Deletion orders the methods a < b < random (lower is better), insertion a > b > random "
        "(higher is better). On insertion"
    )
    insertion, deletion = (reading.against_random(summary, m) for m in ("insertion", "deletion"))
    assert first.endswith(f"{insertion} {deletion} {reading.collapse(summary)}")
    assert paragraphs == [reading.sanity_text(m, s) for m, s in summary.sanity.items()]
    assert "With one photo" not in first


def test_one_photo_is_said_to_give_no_interval() -> None:
    first = reading.interpretation(hand_summary(count=1)).split("\n\n")[0]
    assert "(higher is better). With one photo there is no interval: the gains below are " in (
        first
    )
