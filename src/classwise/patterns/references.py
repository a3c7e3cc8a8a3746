"""Clean reference models for the universal patch detector's `reference_z` statistic.

A reference holds, per class and pixel budget, the mean and sd of the universal patch's logit over
the clean models of a dev population (one dataset, one architecture, one training recipe), with the
threshold and the calibration chosen on that population. `classwise.reporting.detection_bench
--population dev` writes one (report/dev/reference.json); the ones shipped with the package sit in
`references/`, named `<dataset>-<model>.json`, and `reference: auto` takes the one of the run's
dataset and architecture where the run probes the model as the reference was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from classwise.errors import ConfigError
from classwise.models.shipped import without_shipped_target

REFERENCE_DIR = Path(__file__).parent / "references"
# The detector settings a reference was measured with: another value measures another statistic.
SETTINGS = ("ratios", "steps", "finetune_steps", "batch_size", "lr", "alpha", "eval_images")
# What a model's training recipe is, for a reference: how easy each class is to reach moves with it (the
# shipped reference, from 1-epoch models, called 2 of 6 clean 2-epoch models backdoored). Not the poison or
# the seed: those are what a population varies; adversarial training (`setting.adversary`) is part of it.
RECIPE_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches", "trainer.accumulate_grad_batches",
               "trainer.devices", "trainer.num_nodes", "data.train_subset", "data.val_fraction", "data.batch_size",
               "data.augment", "module.optimizer", "module.scheduler", "setting.adversary", "model")
# Lightning's own defaults, so a key left out and a key set to its default are the same recipe.
RECIPE_DEFAULTS = {"trainer.max_steps": -1, "trainer.limit_train_batches": 1.0, "trainer.accumulate_grad_batches": 1,
                   "trainer.num_nodes": 1}


def training_recipe(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The recipe keys of a training run's full config (results.json `run.config`); None without one."""
    if not config or "trainer" not in config:
        return None
    out = {}
    for key in RECIPE_KEYS:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if key == "model" and isinstance(value, dict):
            value = {k: v for k, v in without_shipped_target(value).items() if k != "input"}
        if key in RECIPE_DEFAULTS and (value is None or value == RECIPE_DEFAULTS[key]):
            value = None
        out[key] = value
    return out


def recipe_of_checkpoint(path: str | Path | None) -> dict[str, Any] | None:
    """The training recipe of a checkpoint that classwise-train wrote: from its run folder's results.json
    (`<run>/checkpoints/<file>.ckpt` or `<run>` itself); None for any other file."""
    if path is None:
        return None
    path = Path(path).expanduser().resolve()
    if not path.is_dir() and path.parent.name != "checkpoints":
        return None
    results = (path if path.is_dir() else path.parent.parent) / "results.json"
    if not results.is_file():
        return None
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError):
        return None
    run = data.get("run") if isinstance(data, dict) else None
    return training_recipe(run.get("config") if isinstance(run, dict) else None)


def shipped() -> dict[str, Path]:
    """The references that travel with the package, by name."""
    return {p.stem: p for p in sorted(REFERENCE_DIR.glob("*.json"))}


def load_reference(spec: str) -> tuple[str, dict[str, Any]]:
    """(name, reference): a shipped reference by name, or a reference JSON by path."""
    path = shipped().get(spec) or Path(spec)
    if not path.is_file():
        raise ConfigError(f"detector.universal_patch.reference={spec} does not exist; accepted: auto, null, a shipped "
                          f"reference ({', '.join(shipped()) or 'none'}) or a reference JSON written by the detection "
                          "benchmark (outputs/detect_bench/report/dev/reference.json)")
    ref = json.loads(path.read_text())
    for key in ("ratios", "mean", "sd"):
        if key not in ref:
            raise ConfigError(f"detector.universal_patch.reference={spec} has no {key!r}; accepted: a reference JSON "
                              "written by the detection benchmark")
    return path.stem if path.parent == REFERENCE_DIR else str(path), ref


def mismatch(ref: dict[str, Any], run: dict[str, Any]) -> str | None:
    """The first way `run` (dataset, model, num_classes, image_shape and the detector's SETTINGS) differs
    from what the reference was measured on, as a phrase; None where the reference applies. A key the
    reference does not record is not checked."""
    if "num_classes" in run and len(ref["mean"]) != run["num_classes"]:
        return f"num_classes {run['num_classes']}, not {len(ref['mean'])}"
    for key, value in run.items():
        if key not in ref:
            continue
        want = ref[key]
        if key == "recipe":
            if want is None:
                return "a training recipe, and the reference records none"
            if value is None:
                return "an unknown training recipe (the reference's: " + _recipe_text(want) + ")"
            differ = {k: value.get(k) for k in want if value.get(k) != want[k]}
            if differ:
                return ("another training recipe: " + _recipe_text(differ) + ", not "
                        + _recipe_text({k: want[k] for k in differ}))
            continue
        same = (list(map(float, want)) == list(map(float, value)) if key == "ratios"
                else [int(v) for v in want] == [int(v) for v in value] if key == "image_shape"
                else want == value)
        if not same:
            return f"{key} {value!r}, not {want!r}"
    return None


def auto_reference(dataset: str | None, model: str | None) -> tuple[str, dict[str, Any]] | None:
    """The shipped reference of this dataset and architecture, if there is one."""
    if not dataset or not model:
        return None
    path = shipped().get(f"{dataset}-{model}")
    return load_reference(path.stem) if path else None


def describe(name: str, ref: dict[str, Any]) -> str:
    """'12 clean fashion_mnist small_cnn models of the dev population' (what a verdict was standardised against)."""
    what = " ".join(str(ref[k]) for k in ("dataset", "model") if ref.get(k))
    source = f" of the {ref['population']} population" if ref.get("population") else ""
    return f"reference {name}: {ref.get('models', '?')} clean {what + ' ' if what else ''}models{source}"


def _recipe_text(recipe: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in recipe.items())
