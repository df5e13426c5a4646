"""A method's own options: name, default, range, and how a request's value is checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import values


@dataclass(frozen=True)
class Option:
    """An option with a default; ``high`` may name a configurable limit instead of a number."""

    name: str
    default: Any
    help: str

    def parse(self, value: Any, limits: Mapping[str, int]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class IntegerOption(Option):
    low: int = 0
    high: int | str = 0  # a number, or the name of a limit in ``limits``

    def parse(self, value: Any, limits: Mapping[str, int]) -> int:
        high = limits[self.high] if isinstance(self.high, str) else self.high
        return values.bounded_int(self.name, value, self.low, high)


@dataclass(frozen=True)
class FloatOption(Option):
    low: float = 0.0
    high: float = 1.0

    def parse(self, value: Any, limits: Mapping[str, int]) -> float:
        return values.bounded_float(self.name, value, self.low, self.high)


@dataclass(frozen=True)
class ChoiceOption(Option):
    choices: tuple[str, ...] = ()

    def parse(self, value: Any, limits: Mapping[str, int]) -> str:
        return values.choice(self.name, value, self.choices)
