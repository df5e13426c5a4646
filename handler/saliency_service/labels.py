"""Class names (ImageNet's by default, or a model's own) and the lookup of a class by index or
by name."""

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
    """Index <-> name for a model's classes; names match case-insensitively.

    ``num_classes`` is the count the model outputs (ImageNet's 1000 unless told otherwise;
    ``None``: as many as ``names``). ImageNet's two original duplicate names stay known (and
    ambiguous) only when ``names`` are torchvision's ImageNet categories.
    """

    def __init__(self, names: list[str], num_classes: int | None = NUM_CLASSES) -> None:
        expected = len(names) if num_classes is None else num_classes
        if len(names) != expected or not names:
            raise ValueError(f"expected {expected} class names, got {len(names)}")
        if not all(isinstance(name, str) for name in names):
            raise ValueError("class names must be strings")
        self.names = list(names)
        self.imagenet = len(names) == NUM_CLASSES and self.names == torchvision_categories()
        by_name: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            by_name[name.casefold()].append(index)
        if self.imagenet:
            for index, alias in IMAGENET_ALIASES.items():
                by_name[alias.casefold()].append(index)
        self._by_name = {name: sorted(set(indices)) for name, indices in by_name.items()}

    @classmethod
    def from_json(cls, path: str | Path, num_classes: int | None = NUM_CLASSES) -> Labels:
        """Read a JSON list of names or TorchServe's ``{"0": name, ...}`` index_to_name object."""
        return cls(read_names(path), num_classes)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    def check_index(self, index: int) -> int:
        """``index`` if it is one of this model's classes, else ``invalid_option``."""
        return check_index(index, len(self.names))

    def resolve(self, label: str) -> int:
        """The class index that ``label`` names; a numeric string is an index.

        Raises
        ------
        RequestError
            ``unknown_label``, ``ambiguous_label`` or ``invalid_option`` (index out of range).
        """
        text = label.strip()
        if re.fullmatch(r"\+?[0-9]{1,12}", text):
            return self.check_index(int(text))
        if re.fullmatch(r"[+-]?[0-9]+", text):  # "-0", 4000 digits: not a class index
            raise errors.invalid_option(
                "target", f"must be a class index 0-{len(self.names) - 1}, got {text[:20]!r}"
            )
        indices = self._by_name.get(" ".join(text.split()).casefold())
        if not indices:
            raise errors.unknown_label(label, len(self.names), self.imagenet)
        if len(indices) > 1:
            raise errors.ambiguous_label(label, indices, self.imagenet)
        return indices[0]


def read_names(path: str | Path) -> list[str]:
    """Class names from a JSON list or an ``{"0": name, "1": ...}`` object (keys 0..n-1).

    Raises
    ------
    ValueError
        The file is not such JSON (the message says what is wrong).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        keys = {str(i) for i in range(len(data))}
        if set(data) != keys:
            raise ValueError(f"{path}: an index_to_name object needs the keys 0..{len(data) - 1}")
        data = [data[str(i)] for i in range(len(data))]
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise ValueError(f"{path}: expected a JSON list of class names or an index_to_name object")
    return data


def check_index(index: int, num_classes: int = NUM_CLASSES) -> int:
    if not 0 <= index < num_classes:
        # A huge number is not repeated back: converting it to text is slow (and past 4300 digits
        # refused by Python), and the answer would be as long as the request.
        shown = str(index) if abs(index) < 10**12 else f"a number of {index.bit_length()} bits"
        raise errors.invalid_option(
            "target", f"must be a class index 0-{num_classes - 1}, got {shown}"
        )
    return index
