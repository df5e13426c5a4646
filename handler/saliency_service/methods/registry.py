"""Method names to methods. Adding a method: one module beside this one, one line here."""

from __future__ import annotations

from .base import Method
from .gradcam import GradCam
from .integrated_gradients import IntegratedGradients
from .smoothgrad import SmoothGrad, SmoothGradSquared, VarGrad
from .vanilla import Vanilla

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Vanilla(),
        GradCam(),
        SmoothGrad(),
        SmoothGradSquared(),
        VarGrad(),
        IntegratedGradients(),
    )
}
DEFAULT_METHOD = "vanilla"


def owners_of(option: str) -> list[str]:
    """The methods that take ``option``."""
    return [name for name, method in METHODS.items() if option in method.defaults()]


def method_options() -> set[str]:
    return {option for method in METHODS.values() for option in method.defaults()}
