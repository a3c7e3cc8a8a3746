"""The `search` config group as typed records: the schema Hydra validates the YAML against.

`SearchSettings` is the whole group: the search algorithm's keys at its top (it is a
`SearchConfig`), then one block per concern: `canvas` (which image a pattern is cut from),
`evaluation` (the held-out ASR) and `baselines` (what the patterns are compared with). Registered
in Hydra's ConfigStore (`classwise.pipeline.settings`), so a wrong key or type fails when Hydra
composes; the checks Hydra cannot express (ranges, names) run when the record is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from classwise.errors import ConfigError
from classwise.patterns.baselines import PatchConfig, UAPConfig, check_baselines
from classwise.patterns.canvas import CanvasConfig
from classwise.patterns.search import SearchConfig, validate_ratios


@dataclass
class EvalConfig:
    """Held-out evaluation: sequential, on a seeded random order of the eval split, until each rate's
    95% Wilson interval is at most +-`ci` wide (None: every eval image, as the paper)."""

    max_per_class: int | None = None  # eval images per class; None: the whole eval split
    ci: float | None = None
    forward: int | None = None  # images per evaluation pass; None: from the device's free memory

    def __post_init__(self) -> None:
        if self.ci is not None and not 0 < self.ci < 0.5:
            raise ConfigError(f"search.evaluation.ci={self.ci} is not a half-width; accepted: a number in (0, 0.5), "
                              "or null for the whole eval split")
        for key in ("max_per_class", "forward"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"search.evaluation.{key}={value} must be a positive integer or null")


@dataclass
class BaselinesConfig:
    """The baselines at the pattern's pixel budget (`methods`) and the budgets of the two optimised ones."""

    methods: list[str] = field(default_factory=lambda: ["random"])
    uap: UAPConfig = field(default_factory=UAPConfig)
    universal_patch: PatchConfig = field(default_factory=PatchConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", check_baselines(self.methods))
        if self.uap.eps <= 0 or self.uap.steps < 1:
            raise ConfigError(f"search.baselines.uap.eps={self.uap.eps} and search.baselines.uap.steps={self.uap.steps} "
                              "must be positive")


@dataclass
class SearchSettings(SearchConfig):
    """The `search` config group: what `classwise_patterns` needs, one validated record."""

    preset: str = "paper"
    enabled: bool = True  # false: no pattern searched (the detectors alone, classwise-search)
    pattern_ratios: list[float] = field(default_factory=lambda: [0.05])
    classes: list[int] | None = None  # None: every class
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "pattern_ratios", validate_ratios(self.pattern_ratios))
