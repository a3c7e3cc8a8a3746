"""Backdoor detection over the gathered patterns (ours, Neural Cleanse beside it) and the trigger figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classwise.patterns.search import mask_pixels
from classwise.reporting.results import update_results
from classwise.timing import PhaseTimer


def run_detection(model, dm, records, search_set, search_cfg, ratios, run_dir: Path, detector: dict, trigger,
               target_class, progress, timer: PhaseTimer | None = None) -> dict[str, Any]:
    """Our detection on every searched class (3 or more), Neural Cleanse beside it if asked, trigger figure."""
    from classwise.patterns.detection import pattern_detection

    if len(records) < 3:
        return {}
    timer = timer or PhaseTimer()
    classes = [r["class_index"] for r in records]
    with timer("detection"):
        block = pattern_detection([float(r["mask"].sum()) for r in records], classes)
    # Our detector reads the masks the search already made: its own cost is this statistic alone.
    block["seconds"] = round(timer.seconds["detection"], 4)
    sections: dict[str, Any] = {"detection": block}
    if detector.get("name") == "neural_cleanse":
        from classwise.patterns.neural_cleanse import NeuralCleanseConfig, neural_cleanse

        nc_cfg = NeuralCleanseConfig(**{k: v for k, v in detector.items() if k != "name"}, seed=search_cfg.seed)
        with timer("neural_cleanse"):
            sections["detection_baselines"] = {"neural_cleanse": neural_cleanse(model, classes, *search_set, nc_cfg, progress)}
    if trigger is not None and target_class is not None and target_class in classes:
        rec = records[classes.index(target_class)]
        region = trigger.region
        overlap = {}
        for r in ratios:
            pix = mask_pixels(rec["mask"], r)
            overlap[str(r)] = float((pix & region).sum() / pix.sum())
        block["true_target"] = target_class
        block["target_pixels_on_trigger"] = overlap
        _trigger_figure(trigger, rec, dm.classes[target_class], ratios, run_dir / "patterns" / "trigger_vs_pattern.png")
    update_results(run_dir, **sections)
    flagged = block["flagged"]
    print(f"detection (log mask L1, MAD index > 2): flagged {flagged or 'none'}; "
          f"predicted target {block['predicted_target']}")
    if "detection_baselines" in sections:
        nc = sections["detection_baselines"]["neural_cleanse"]
        print(f"neural cleanse: flagged {nc['flagged'] or 'none'}; predicted target {nc['predicted_target']} ({nc['seconds']} s)")
    return sections


def _trigger_figure(trigger, record: dict, name: str, ratios: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    from classwise.reporting.figures import _show, pattern_on_gray, save_figure

    ratio = min(ratios)
    fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.2))
    _show(axes[0], trigger.example(), f"true trigger ({trigger.name})")
    _show(axes[1], record["canvas"], f"{name}: canvas")
    _show(axes[2], record["mask"], "mask", cmap="magma")
    _show(axes[3], pattern_on_gray(record["canvas"], mask_pixels(record["mask"], ratio)), f"pattern at {ratio:.0%}")
    save_figure(fig, path)


