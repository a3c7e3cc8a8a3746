"""The `search` group's schema in Hydra's ConfigStore, and its YAML or dict made one validated record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from classwise.errors import ConfigError, one_line
from classwise.patterns.settings import SearchSettings

# Keys of the flat `search` block that moved when it was nested by concern: old -> new (under `search.`
# unless it names another group).
MOVED_KEYS = {
    "canvas_source": "search.canvas.source", "canvas_index": "search.canvas.index", "canvas_k": "search.canvas.k",
    "canvas_max_candidates": "search.canvas.max_candidates",
    "eval_max_per_class": "search.evaluation.max_per_class", "eval_ci": "search.evaluation.ci",
    "eval_forward": "search.evaluation.forward",
    "uap_eps": "search.baselines.uap.eps", "uap_steps": "search.baselines.uap.steps",
    "uap_batch_size": "search.baselines.uap.batch_size",
    "patch_steps": "search.baselines.universal_patch.steps",
    "patch_finetune_steps": "search.baselines.universal_patch.finetune_steps",
    "patch_batch_size": "search.baselines.universal_patch.batch_size",
    "detection_asr_gate": "detector.patterns.asr_gate", "detection_gate_ratio": "detector.patterns.gate_ratio",
}
# Keys that were a value and are a block now: `search.canvas=best_of_k`, `search.baselines=[random]`.
BECAME_BLOCKS = {"canvas": "search.canvas.strategy", "baselines": "search.baselines.methods"}


def schema() -> DictConfig:
    """SearchSettings as an OmegaConf schema, the baselines' seed and alpha following the search's unless set."""
    node = OmegaConf.structured(SearchSettings)
    node.baselines.uap.seed = "${...seed}"
    node.baselines.universal_patch.seed = "${...seed}"
    node.baselines.universal_patch.alpha = "${...alpha}"
    return node


def register_schemas() -> None:
    """`search/schema` in Hydra's ConfigStore: conf/search/paper.yaml starts from it (its defaults list)."""
    ConfigStore.instance().store(group="search", name="schema", node=schema())


def moved_key_error(key: str, value: Any) -> ConfigError | None:
    """The one-line refusal for a key of the old flat `search` block (None: not an old key)."""
    if key in MOVED_KEYS:
        return ConfigError(f"search.{key} has moved; accepted: {MOVED_KEYS[key]}")
    if key in BECAME_BLOCKS and not isinstance(value, Mapping | DictConfig):
        return ConfigError(f"search.{key} is a block now; accepted: {BECAME_BLOCKS[key]}={value_text(value)}")
    return None


def value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def check_moved_overrides(argv: list[str]) -> None:
    """Refuse `search.<old key>=...` on a command line, naming the new key (before Hydra composes)."""
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or not key.startswith("search.") or key.count(".") != 1:
            continue
        old = key.split(".", 1)[1]
        looks_like_block = value.startswith("{")
        error = moved_key_error(old, {} if looks_like_block else value)
        if error is not None:
            raise error


def parse_settings(settings: SearchSettings | Mapping[str, Any] | DictConfig) -> SearchSettings:
    """The `search` group's YAML (or a dict of the same shape) as one validated `SearchSettings`."""
    if isinstance(settings, SearchSettings):
        return settings
    plain = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else dict(settings)
    check_moved_keys(plain)
    try:
        merged = OmegaConf.merge(schema(), plain)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc, "search")) from None


def check_moved_keys(settings: Mapping[str, Any]) -> None:
    """Refuse a key of the old flat `search` block in a dict of search settings, naming its new place."""
    for key, value in settings.items():
        error = moved_key_error(key, value)
        if error is not None:
            raise error
