"""What every attribution function returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SaliencyResult:
    """Maps and what they explain, batch-first."""

    maps: torch.Tensor  # (N, H, W), >= 0
    logits: torch.Tensor  # (N, K), of the unperturbed inputs
    targets: torch.Tensor  # (N,) int64, the class each map explains
