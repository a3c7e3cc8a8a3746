"""The class-wise pattern method in plain PyTorch (no Lightning, no Hydra): callable from a notebook."""

from classwise.patterns.canvas import CanvasConfig, CanvasPool
from classwise.patterns.classwise import ClassPattern, classwise_patterns
from classwise.patterns.evaluate import EvalOptions, attack_success_rates, predict
from classwise.patterns.search import (
    ImageSet,
    PatternResult,
    SearchConfig,
    SearchOptions,
    paste,
    search_patterns,
    top_pixels,
)

__all__ = [
    "CanvasConfig", "CanvasPool", "ClassPattern", "EvalOptions", "ImageSet", "PatternResult", "SearchConfig", "SearchOptions",
    "attack_success_rates", "classwise_patterns", "paste", "predict", "search_patterns", "top_pixels",
]
