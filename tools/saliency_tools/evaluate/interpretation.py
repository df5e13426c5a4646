"""The report's reading of its numbers, written from them (so it stays true when they change):
who beats the random map, whether deletion can separate the methods at all, and what the
randomisation test says of each method."""

from __future__ import annotations

import math
from collections.abc import Sequence

from saliency_tools.metrics import Interval

from .experiment import RANDOM
from .summary import Sanity, Summary
from .tables import interval_text

PASS_BELOW = 0.8  # a map whose rank correlation never falls below this ignored the weights
CLOSE = 0.15  # a randomised map this close to the cross-photo correlation kept nothing learned


def verdict(gain: Interval) -> str:
    """``beats``, ``loses`` or ``ties``: where the 95% interval of the gain over random lies."""
    if gain.excludes_zero():
        return "beats" if gain.low > 0 else "loses"
    return "ties"


def listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def against_random(summary: Summary, metric: str) -> str:
    """One sentence per metric: who beats the random map, by how much, who cannot be told apart
    from it, who does worse; from the paired 95% intervals."""
    gains = summary.deletion_gain if metric == "deletion" else summary.insertion_gain
    wins = summary.deletion_wins if metric == "deletion" else summary.insertion_wins
    floor = (summary.deletion if metric == "deletion" else summary.insertion)[RANDOM].mean
    groups: dict[str, list[str]] = {"beats": [], "ties": [], "loses": []}
    for m in sorted(gains, key=lambda m: gains[m].mean, reverse=True):
        share = f", {100 * gains[m].mean / floor:+.0f}%" if floor > 0 else ""
        groups[verdict(gains[m])].append(
            f"{m} ({interval_text(gains[m], True)}{share}, {wins[m]}/{summary.count} photos)"
        )
    what = "lower" if metric == "deletion" else "higher"
    parts = []
    if groups["beats"]:
        parts.append(f"{listing(groups['beats'])} beat{'s' * (len(groups['beats']) == 1)} it")
    if groups["ties"]:
        undecided = listing(groups["ties"])
        parts.append(f"{undecided} cannot be told apart from it at this number of photos")
    if groups["loses"]:
        parts.append(f"{listing(groups['loses'])} do{'es' * (len(groups['loses']) == 1)} worse")
    return (
        f"On {metric} (gain = how much {what} the method's AUC is than the random map's "
        f"{floor:.3f}, 95% interval, share of random's AUC, photos won): {'; '.join(parts)}."
    )


def collapse(summary: Summary) -> str:
    """Whether deletion can separate the methods at all: SqueezeNet's probability may halve
    after a few percent of the pixels whatever their order."""
    lives = summary.half_lives
    halves = ", ".join(f"{100 * lives[m]:.1f}% ({m})" for m in lives)
    if max(lives.values()) >= 0.1:
        return f"The probability halves once {halves} of the pixels are deleted."
    text = f"Every deletion curve collapses early: the probability halves once {halves}"
    text += " of the pixels are deleted, whatever their order, so the deletion AUCs are small"
    spread = {
        name: max(i.mean for i in scores.values()) - min(i.mean for i in scores.values())
        for name, scores in (("deletion", summary.deletion), ("insertion", summary.insertion))
    }
    if spread["insertion"] > spread["deletion"]:
        text += ", and insertion separates the methods better"
    return text + "."


def sanity_text(method: str, s: Sanity) -> str:
    """The randomisation test of one method, in words."""
    left_out = (
        f" ({s.undefined} randomised map{'s' * (s.undefined > 1)} came out constant, the "
        "correlation undefined, and are left out)"
        if s.undefined
        else ""
    )
    if not math.isfinite(s.lowest):
        return (
            f"{method}: every randomised model gives a constant map, so the rank correlation is "
            "undefined: the map vanishes without the learned weights (it depends on them, "
            "trivially)."
        )
    verdict_text = (
        "the map depends on the learned weights"
        if s.lowest < PASS_BELOW
        else "the map barely changes: it fails the sanity check"
    )
    text = (
        f"{method}: the rank correlation with the trained model's map falls from 1 to "
        f"{s.after_classifier:.2f} when the classifier alone is re-initialised and is "
        f"{s.all_random:.2f} with every layer random (lowest {s.lowest:.2f}){left_out}: "
        f"{verdict_text}."
    )
    if math.isfinite(s.across) and s.all_random > 0.2:
        pattern = (
            "not learned structure but a fixed, image-independent pattern that the architecture "
            "imposes on every map (such as the stride-2 sampling grid and the padded border)."
        )
        if s.all_random <= s.across:
            text += (
                f" What remains is no more than the {s.across:.2f} that the trained model's maps "
                f"of two *different* photos share: {pattern}"
            )
        elif s.all_random - s.across <= CLOSE:
            text += (
                f" What remains is close to the {s.across:.2f} that the trained model's maps of "
                f"two *different* photos share: {pattern}"
            )
        else:
            text += (
                f" That is well above the {s.across:.2f} that the trained model's maps of two "
                "different photos share: part of the map survives the loss of every learned "
                "weight, so it reflects the image more than the model."
            )
    return text


def interpretation(summary: Summary) -> str:
    """What the numbers say, written from the numbers (so it stays true when they change)."""
    deletion = sorted(summary.deletion, key=lambda m: summary.deletion[m].mean)
    insertion = sorted(summary.insertion, key=lambda m: summary.insertion[m].mean, reverse=True)
    sentences = [
        f"Deletion orders the methods {' < '.join(deletion)} (lower is better), insertion "
        f"{' > '.join(insertion)} (higher is better)."
    ]
    if summary.count < 2:
        sentences.append(
            "With one photo there is no interval: the gains below are single differences."
        )
    sentences += [against_random(summary, "insertion"), against_random(summary, "deletion")]
    sentences.append(collapse(summary))
    paragraphs = [sanity_text(m, s) for m, s in summary.sanity.items()]
    return "\n\n".join([" ".join(sentences), *paragraphs])


CAVEATS = """\
How to read this. Deletion and insertion test whether the map's *order* of pixels matches what the
model needs: a map can look noisy and still rank the decisive pixels first. Both feed the model
images it never saw in training (mean-coloured holes, blur), so part of each curve is the model
reacting to the artefact rather than to lost evidence: compare the methods with each other and
with the random map, not with an absolute scale. The two artefacts likely favour different maps:
restoring whole regions into the blur (a coarse map such as Grad-CAM's) gives the model intact
local texture early, while scattered holes (a random or noisy map) damage texture everywhere at
once; so insertion flatters coarse maps, and deletion is hard to win against a random order.
The intervals are 95% Student-t intervals over the photos, each photo one observation, and the
gains over random are paired (each photo its own control); they assume the photos are a random
sample of what the service will see, which a handful of library photos is not. The randomisation
test is a necessary condition only: a map that does not change when the weights are destroyed
cannot be explaining the weights (Adebayo et al. show that an edge detector passes the eye test
this way), but a map that does change is not thereby proven right."""
