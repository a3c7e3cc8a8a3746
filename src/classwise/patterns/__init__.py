"""The class-wise pattern method in plain PyTorch (no Lightning, no Hydra): callable from a notebook."""

from classwise.patterns.baselines import BaselineTask, baseline
from classwise.patterns.canvas import CanvasConfig, CanvasPool
from classwise.patterns.classwise import ClassPattern, SearchData, classwise_patterns
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
from classwise.patterns.settings import BaselinesConfig, EvalConfig, SearchSettings

__all__ = [
    "BaselineTask", "BaselinesConfig", "CanvasConfig", "CanvasPool", "ClassPattern", "EvalConfig", "EvalOptions", "ImageSet",
    "PatternResult", "SearchConfig", "SearchData", "SearchOptions", "SearchSettings",
    "attack_success_rates", "baseline", "classwise_patterns", "paste", "predict", "search_patterns", "top_pixels",
]
