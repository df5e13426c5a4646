"""What an explanation method is, and how requests of a batch share passes.

A ``Method`` owns its name, its options (defaults, ranges, messages), how its requests share
forward/backward passes (its engine) and the fields it adds to ``saliency`` in the answer.
Two engines:

- ``SinglePassMethod``: a map from one forward (and at most one backward) pass of its image.
  The batch's such requests are grouped by what they differentiate (``attribution.passes``):
  those that want the input gradient (vanilla) share one forward and one backward pass, which
  also gives the Grad-CAM layer's gradient where one of them wants it; Grad-CAM of the class
  score shares one forward pass without autograd, or takes the pass of the same image.
- ``SampledMethod``: a map from the gradients of many derived inputs (noisy copies, path
  points). The derived inputs of every such request of a batch share chunked passes of at most
  ``chunk_size`` images (``attribution.sampled``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..attribution.gradients import PassGradients
from ..attribution.sampled import Sampler
from .options import Option

Settings = Mapping[str, Any]


@dataclass(frozen=True)
class ExplainContext:
    """What methods may need beyond the request: the model's layer for CAMs, the chunking."""

    chunk_size: int
    black: torch.Tensor  # (C, 1, 1): a black image in the model's normalised input space
    cam_layer: nn.Module | None = None
    cam_layer_name: str | None = None
    cam_missing: str = "this model has none set"  # why there is no cam_layer, for the refusal


@dataclass(frozen=True)
class Job:
    """One request's explanation: its image, method, settings, requested target, objective."""

    inputs: torch.Tensor  # (C, H, W), on the model's device, in its dtype
    method: Method
    settings: Settings
    target: int  # a class, or PREDICTED
    objective: str


@dataclass(frozen=True)
class Explanation:
    map: torch.Tensor  # (H, W) >= 0
    logits: torch.Tensor  # (K,) of the clean input
    target: int  # the class explained
    extra: dict[str, Any] = field(default_factory=dict)  # added to the answer's "saliency"


class Method(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the README's method table and for errors
    options: ClassVar[tuple[Option, ...]] = ()

    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}

    def settle(self, settings: Settings) -> Settings:
        """Settings made concrete before computing (e.g. a drawn seed); reported back."""
        return settings

    def passes(self, settings: Settings) -> int:
        """Images one request sends through the network: the cost that routing compares."""
        return 1

    def check(self, context: ExplainContext) -> None:
        """Raise ``RequestError`` if this model cannot be explained this way."""
        return None

    def describe(self, settings: Settings) -> dict[str, Any]:
        """The method's settings as reported in ``saliency``."""
        return {option.name: settings[option.name] for option in self.options}


class SinglePassMethod(Method):
    wants_input_gradient: ClassVar[bool] = True
    wants_layer: ClassVar[bool] = False

    @abstractmethod
    def maps(
        self,
        passed: PassGradients,
        rows: Sequence[int],
        size: tuple[int, int],
        context: ExplainContext,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """(map ``size``, extra fields) of the batch rows ``rows`` of one shared pass."""


class SampledMethod(Method):
    @abstractmethod
    def sampler(self, job: Job, context: ExplainContext) -> Sampler:
        """The derived inputs of one request, and what it makes of their gradients."""

    @abstractmethod
    def results(
        self,
        model: nn.Module,
        jobs: Sequence[Job],
        samplers: Sequence[Sampler],
        logits: torch.Tensor,
        targets: torch.Tensor,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """(map, extra fields) of each job once its sampler has seen every gradient."""
