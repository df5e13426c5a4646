"""ImageNet class names and the lookup of a class by index or by name."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from . import errors

NUM_CLASSES = 1000

# torchvision renamed two of ImageNet's duplicated class names ("crane" 134/517, "maillot"
# 638/639) to tell them apart. A client that types the original ImageNet name means either class,
# so those names stay known, and ambiguous, as ImageNet has them.
IMAGENET_ALIASES = {134: "crane", 639: "maillot"}


def torchvision_categories() -> list[str]:
    """The 1000 category names in torchvision's order (the order of the model's outputs)."""
    from torchvision.models import SqueezeNet1_1_Weights

    return list(SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"])


class Labels:
    """Index <-> name for the 1000 ImageNet classes; names match case-insensitively."""

    def __init__(self, names: list[str]) -> None:
        if len(names) != NUM_CLASSES:
            raise ValueError(f"expected {NUM_CLASSES} class names, got {len(names)}")
        self.names = names
        by_name: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            by_name[name.casefold()].append(index)
        for index, alias in IMAGENET_ALIASES.items():
            by_name[alias.casefold()].append(index)
        self._by_name = {name: sorted(set(indices)) for name, indices in by_name.items()}

    @classmethod
    def from_json(cls, path: str | Path) -> Labels:
        """Read a JSON list of names or TorchServe's ``{"0": name, ...}`` index_to_name object."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = [data[str(i)] for i in range(len(data))]
        return cls(list(data))

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    def resolve(self, label: str) -> int:
        """The class index that ``label`` names; a numeric string is an index.

        Raises
        ------
        RequestError
            ``unknown_label``, ``ambiguous_label`` or ``invalid_option`` (index out of range).
        """
        text = label.strip()
        if re.fullmatch(r"\+?[0-9]{1,12}", text):
            return check_index(int(text))
        if re.fullmatch(r"[+-]?[0-9]+", text):  # "-0", 4000 digits: not a class index
            raise errors.invalid_option(
                "target", f"must be a class index 0-{NUM_CLASSES - 1}, got {text[:20]!r}"
            )
        indices = self._by_name.get(" ".join(text.split()).casefold())
        if not indices:
            raise errors.unknown_label(label)
        if len(indices) > 1:
            raise errors.ambiguous_label(label, indices)
        return indices[0]


def check_index(index: int) -> int:
    if not 0 <= index < NUM_CLASSES:
        # A huge number is not repeated back: converting it to text is slow (and past 4300 digits
        # refused by Python), and the answer would be as long as the request.
        shown = str(index) if abs(index) < 10**12 else f"a number of {index.bit_length()} bits"
        raise errors.invalid_option(
            "target", f"must be a class index 0-{NUM_CLASSES - 1}, got {shown}"
        )
    return index
