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

REFERENCE_DIR = Path(__file__).parent / "references"
# The detector settings a reference was measured with: another value measures another statistic.
SETTINGS = ("ratios", "steps", "finetune_steps", "batch_size", "lr", "alpha", "eval_images")


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
    for key, value in run.items():
        if key not in ref:
            continue
        want = ref[key]
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
