"""The flat `search` config split into the algorithm's dataclasses, validated before any compute."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from classwise.errors import ConfigError
from classwise.patterns.canvas import CanvasConfig
from classwise.patterns.search import SearchConfig, validate_ratios

SEARCH_KEYS = {f for f in SearchConfig.__dataclass_fields__}
CANVAS_KEYS = {"canvas": "strategy", "canvas_source": "source", "canvas_index": "index", "canvas_k": "k",
               "canvas_max_candidates": "max_candidates"}
OTHER_KEYS = {"preset", "pattern_ratios", "classes", "eval_max_per_class", "eval_ci", "enabled", "baselines", "uap_eps",
              "uap_steps", "uap_batch_size", "eval_forward", "patch_steps", "patch_finetune_steps", "patch_batch_size"}
MOVED_KEYS = {"detection_asr_gate": "detector.patterns.asr_gate", "detection_gate_ratio": "detector.patterns.gate_ratio"}


def parse_settings(settings: dict[str, Any] | DictConfig) -> tuple[SearchConfig, CanvasConfig, dict[str, Any]]:
    """Split the flat `search` config into the algorithm's dataclasses; unknown keys are an error."""
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    settings = dict(settings)
    unknown = set(settings) - SEARCH_KEYS - set(CANVAS_KEYS) - OTHER_KEYS
    moved = sorted(unknown & set(MOVED_KEYS))
    if moved:
        raise ConfigError(f"search.{moved[0]} has moved; accepted: {MOVED_KEYS[moved[0]]}")
    if unknown:
        accepted = ", ".join(sorted(SEARCH_KEYS | set(CANVAS_KEYS) | OTHER_KEYS))
        raise ConfigError(f"search.{sorted(unknown)[0]} is not a search setting; accepted: {accepted}")
    search_cfg = SearchConfig(**{k: v for k, v in settings.items() if k in SEARCH_KEYS})
    canvas_cfg = CanvasConfig(**{CANVAS_KEYS[k]: v for k, v in settings.items() if k in CANVAS_KEYS})
    other = {k: settings.get(k) for k in OTHER_KEYS}
    other["pattern_ratios"] = validate_ratios(other["pattern_ratios"] or [0.05])
    from classwise.patterns.baselines import PatchConfig, UAPConfig, check_baselines

    other["baselines"] = check_baselines(["random"] if other["baselines"] is None else other["baselines"])
    uap = {k: other[f"uap_{k}"] for k in ("eps", "steps", "batch_size") if other.get(f"uap_{k}") is not None}
    other["uap"] = UAPConfig(**uap, seed=search_cfg.seed)
    patch = {k: other[f"patch_{k}"] for k in ("steps", "finetune_steps", "batch_size") if other.get(f"patch_{k}") is not None}
    other["patch"] = PatchConfig(**patch, alpha=search_cfg.alpha, seed=search_cfg.seed)
    if other["uap"].eps <= 0 or other["uap"].steps < 1:
        raise ConfigError(f"search.uap_eps={other['uap'].eps} and search.uap_steps={other['uap'].steps} must be positive")
    if other["eval_ci"] is not None and not 0 < other["eval_ci"] < 0.5:
        raise ConfigError(f"search.eval_ci={other['eval_ci']} is not a half-width; accepted: a number in (0, 0.5), "
                          "or null for the whole eval split")
    return search_cfg, canvas_cfg, other
