"""Explanation methods as objects: name, options, how requests share passes, answer fields."""

from .base import ExplainContext, Explanation, Job, Method, SampledMethod, SinglePassMethod
from .engine import explain
from .registry import DEFAULT_METHOD, METHODS, method_options, owners_of

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "ExplainContext",
    "Explanation",
    "Job",
    "Method",
    "SampledMethod",
    "SinglePassMethod",
    "explain",
    "method_options",
    "owners_of",
]
