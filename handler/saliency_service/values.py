"""Option values as clients send them (JSON values or multipart strings), checked and coerced.

Each function returns the value or raises ``invalid_option`` naming the option; quoted input is
cut to 40 characters, so an error never echoes a large input back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from . import errors

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}
INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


def parse_integer(text: str) -> int | None:
    """A plain ASCII decimal integer, or None (no "+-5", no superscripts, no 4000 digits)."""
    text = text.strip()
    return int(text) if INTEGER.fullmatch(text) else None


def bounded_int(name: str, value: Any, low: int, high: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = parse_integer(value)
    if number is None or not low <= number <= high:
        raise errors.invalid_option(name, f"must be an integer {low}-{high}, got {value!r:.40}")
    return number


def bounded_float(name: str, value: Any, low: float, high: float) -> float:
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):  # "abc", 10**400
            number = None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise errors.invalid_option(name, f"must be a number {low:g}-{high:g}, got {value!r:.40}")
    return number


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise errors.invalid_option(name, f"must be one of {', '.join(choices)}, got {value!r:.40}")


def boolean(name: str, value: Any) -> bool:
    """true/false; also 1/0 and the words of ``TRUE_WORDS``/``FALSE_WORDS``, in JSON as in forms."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise errors.invalid_option(name, f"must be true or false, got {value!r:.40}")
