"""Our served Integrated Gradients map against the stock handler's Captum map, like with like."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from saliency_service import rendering
from saliency_tools.ranks import rank_correlation

from .stock import captum_map


def served_map(answer: Mapping[str, Any]) -> np.ndarray:
    """Our answer's map as 8-bit levels (round(255 s / max): ranks are those of s)."""
    png = base64.b64decode(answer["saliency"]["png"])
    with Image.open(io.BytesIO(png)) as picture:
        return np.asarray(picture, dtype=np.float64)


def as_8bit(values: np.ndarray) -> np.ndarray:
    """The service's own quantisation, for a like-with-like comparison."""
    pixels, _ = rendering.quantise(torch.from_numpy(np.asarray(values, dtype=np.float64))[None])
    return pixels[0].astype(np.float64)


@dataclass(frozen=True)
class MapAgreement:
    """Spearman rank correlations (ties averaged) of one photo's maps."""

    photo: str
    target: int
    label: str
    served: float  # our 8-bit PNG vs Captum's float map: the figure the goal is about
    ceiling: float  # Captum's own map quantised like ours vs its float map
    both_8bit: float  # ours vs Captum's, both quantised
    input_diff: float  # max |our model input - the stock transform's|
    delta: float  # our answer's convergence delta


def agreement(photo: str, ours: Mapping[str, Any], stock: Any, input_diff: float) -> MapAgreement:
    mine, theirs = served_map(ours), captum_map(stock)
    return MapAgreement(
        photo,
        ours["target"]["index"],
        ours["target"]["label"],
        rank_correlation(mine, theirs),
        rank_correlation(as_8bit(theirs), theirs),
        rank_correlation(mine, as_8bit(theirs)),
        input_diff,
        float(ours["saliency"].get("delta", float("nan"))),
    )
