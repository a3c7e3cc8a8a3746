"""The report's tables: one small function of the runs per table, registered in TABLES.

A table's columns are the union of what the runs hold; a missing value is a blank cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from classwise.reporting.runs import (
    Run,
    all_baselines,
    all_ratios,
    as_number,
    as_text,
    baselines_of,
    by_ratio,
    ci_of,
    n_of,
    run_mean_intervals,
    run_means,
)


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]


def per_class_table(runs: Sequence[Run]) -> Table:
    ratios, baselines = all_ratios(runs), all_baselines(runs)
    ratio_cols = [c for r in ratios for c in (f"asr@{r}", f"asr_ci@{r}", f"asr_n@{r}",
                                              *(c for b in baselines for c in (f"{b}@{r}", f"{b}_ci@{r}")),
                                              f"base_rate@{r}", f"base_rate_ci@{r}", f"components@{r}")]
    columns = ["run", "dataset", "model", "setting", "class_index", "class_name", "canvas", "mask_l1", "mask_tv",
               *ratio_cols]
    rows = []
    for run in runs:
        for cls in run.classes:
            row: dict[str, Any] = {
                "run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
                "class_index": cls.get("class_index"), "class_name": cls.get("class_name"),
                "canvas": _canvas(cls), "mask_l1": cls.get("mask_l1"), "mask_tv": cls.get("mask_tv"),
            }
            entries = by_ratio(cls)
            for r in ratios:
                e = entries.get(r, {})
                row[f"asr@{r}"] = e.get("asr")
                row[f"asr_ci@{r}"], row[f"asr_n@{r}"] = ci_of(e), n_of(e)
                for b in baselines:
                    row[f"{b}@{r}"] = baselines_of(e).get(b)
                    row[f"{b}_ci@{r}"] = ci_of(e, baseline=b)
                row[f"base_rate@{r}"] = e.get("base_rate")
                row[f"base_rate_ci@{r}"] = ci_of(e, "base_rate")
                row[f"components@{r}"] = e.get("components")  # claim 4's "simpler" (patterns/shape.py)
            rows.append(row)
    return Table("per_class", "Per-class attack success rate (ASR) of each pattern; `_ci`: its 95% Wilson interval, "
                 "`asr_n`: the images it was measured on", columns, rows)


def _canvas(cls: dict[str, Any]) -> str:
    split, index = cls.get("canvas_split"), cls.get("canvas_index")
    if split is None and index is None:
        return ""
    return f"{as_text(split)}[{as_text(index)}]" if split is not None else as_text(index)


def summary_table(runs: Sequence[Run]) -> Table:
    ratios, baselines = all_ratios(runs), all_baselines(runs)
    mean_cols = [c for r in ratios for c in (f"mean_asr@{r}", f"mean_asr_ci@{r}")]
    mean_cols += [c for b in baselines for r in ratios for c in (f"mean_{b}@{r}", f"mean_{b}_ci@{r}")]
    mean_cols += [f"mean_base_rate@{r}" for r in ratios]
    mean_cols += [f"mean_components@{r}" for r in ratios]
    columns = ["run", "dataset", "model", "setting", "seed", "classes", "clean_acc", "robust_acc",
               "backdoor_asr", *mean_cols]
    rows = []
    for run in runs:
        m = run.metrics
        row: dict[str, Any] = {
            "run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
            "seed": run.info.get("seed"), "classes": len(run.classes) if run.has_classes else None,
            "clean_acc": m.get("clean_acc"), "robust_acc": m.get("robust_acc"),
            "backdoor_asr": m.get("backdoor_asr"),
        }
        means = run_means(run, ratios, baselines)
        row.update({f"mean_{k}": v for k, v in means.items()})
        row.update({f"mean_{k}": v for k, v in run_mean_intervals(run, ratios, baselines).items() if f"mean_{k}" in columns})
        rows.append(row)
    return Table("summary", "One row per run: accuracy and mean ASR over classes per pattern ratio; `_ci`: the 95% "
                 "interval of the mean (eval-image sampling only)", columns, rows)


def _detection_cols(prefix: str) -> list[str]:
    return [f"{prefix}predicted_target", f"{prefix}predicted_name", f"{prefix}max_anomaly_index",
            f"{prefix}max_anomaly_class", f"{prefix}target_anomaly_index", f"{prefix}flagged", f"{prefix}flagged_names",
            f"{prefix}seconds"]


def _detection_values(block: Any, target: Any, prefix: str, names: dict[Any, str] | None = None) -> dict[str, Any]:
    if not isinstance(block, dict):
        return {}
    classes = block.get("classes") if isinstance(block.get("classes"), list) else []
    index = block.get("anomaly_index") if isinstance(block.get("anomaly_index"), list) else []
    pairs = [(c, v) for c, v in zip(classes, index, strict=False) if as_number(v) is not None]
    best = max(pairs, key=lambda p: as_number(p[1])) if pairs else (None, None)
    target_index = next((v for c, v in zip(classes, index, strict=False) if target is not None and c == target), None)
    return {
        f"{prefix}predicted_target": block.get("predicted_target"),
        f"{prefix}max_anomaly_index": best[1], f"{prefix}max_anomaly_class": best[0],
        f"{prefix}target_anomaly_index": target_index,
        f"{prefix}flagged": block.get("flagged"), f"{prefix}seconds": block.get("seconds"),
        # The dataset's class names beside the indices (ImageFolder folders, CIFAR-10 labels, ...).
        f"{prefix}predicted_name": (names or {}).get(block.get("predicted_target")),
        f"{prefix}flagged_names": [(names or {}).get(c) for c in block.get("flagged") or []] or None,
    }


VERDICT_COLS = ("verdict", "score", "predicted_target", "threat_model")


def detection_table(runs: Sequence[Run]) -> Table:
    names = list(dict.fromkeys(n for run in runs for n in run.detectors))
    columns = ["run", "dataset", "model", "setting", "trigger", "backdoor_asr", "true_target",
               *[f"{n}.{k}" for n in names for k in VERDICT_COLS], *_detection_cols(""), *_detection_cols("nc_")]
    rows = []
    for run in runs:
        blocks = run.detectors
        det = blocks.get("patterns")
        if not blocks:
            continue
        backdoor = run.metrics.get("backdoor") if isinstance(run.metrics.get("backdoor"), dict) else {}
        target = next((b["true_target"] for b in blocks.values() if b.get("true_target") is not None), None)
        if target is None:
            target = backdoor.get("target_class")
        nc = blocks.get("neural_cleanse")
        row: dict[str, Any] = {
            "run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
            "trigger": backdoor.get("trigger"), "backdoor_asr": run.metrics.get("backdoor_asr"),
            "true_target": target,
        }
        classes = run.data.get("classes") if isinstance(run.data.get("classes"), list) else []
        names = {c.get("class_index"): c.get("class_name") for c in classes if isinstance(c, dict)}
        row.update({f"{n}.{k}": b.get(k) for n, b in blocks.items() for k in VERDICT_COLS})
        row.update(_detection_values(det, target, "", names))
        row.update(_detection_values(nc, target, "nc_", names))
        rows.append(row)
    return Table("detection", "Backdoor detection: every detector's verdict (<detector>.verdict, .score), the "
                 "class-wise patterns' anomaly index (ours, no prefix) and Neural Cleanse's (nc_)", columns, rows)


def accuracy_table(runs: Sequence[Run]) -> Table:
    columns = ["run", "dataset", "model", "setting", "clean_acc", "robust_acc", "robust_eps", "robust_norm",
               "robust_steps"]
    rows = []
    for run in runs:
        m = run.metrics
        attack = m.get("robust_attack") if isinstance(m.get("robust_attack"), dict) else {}
        rows.append({
            "run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
            "clean_acc": m.get("clean_acc"), "robust_acc": m.get("robust_acc"), "robust_eps": attack.get("eps"),
            "robust_norm": attack.get("norm"), "robust_steps": attack.get("steps"),
        })
    return Table("accuracy", "Clean and robust (PGD) test accuracy", columns, rows)


def failed_table(runs: Sequence[Run]) -> Table:
    columns = ["run", "dataset", "model", "setting", "error"]
    rows = [{"run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
             "error": run.failed} for run in runs if run.failed is not None]
    return Table("failed", "Sweep jobs that failed (the traceback is the job folder's FAILED file)", columns, rows)


TIMING_PHASES = ("train", "test", "canvas", "search", "evaluation")
TIMING_TAIL = ("detection", "neural_cleanse", "outputs", "search_step")  # schema 2 names detection and NC here


def timing_table(runs: Sequence[Run]) -> Table:
    """Seconds per phase of each run that has a `timing` block (baselines: one column each)."""
    timed = [(run, run.data["timing"]) for run in runs if isinstance(run.data.get("timing"), dict)]
    names = sorted({b for _, t in timed if isinstance(t.get("baselines"), dict) for b in t["baselines"]},
                   key=lambda n: (n != "random", n))
    detectors = list(dict.fromkeys(d for _, t in timed if isinstance(t.get("detector"), dict) for d in t["detector"]))
    columns = ["run", "dataset", "model", "setting", *TIMING_PHASES, *(f"baseline_{n}" for n in names),
               *(f"detector_{d}" for d in detectors), *TIMING_TAIL]
    rows = []
    for run, t in timed:
        base = t.get("baselines") if isinstance(t.get("baselines"), dict) else {}
        rows.append({"run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
                     **{k: as_number(t.get(k)) for k in (*TIMING_PHASES, *TIMING_TAIL)},
                     **{f"baseline_{n}": as_number(base.get(n)) for n in names},
                     **{f"detector_{d}": as_number((t.get("detector") or {}).get(d)) for d in detectors}})
    return Table("timing", "Seconds per phase (search_step: everything after training; slowest rank per phase)",
                 columns, rows)


# A new table is one function of the runs, registered here (the order is the report's order).
TABLES: dict[str, Callable[[Sequence[Run]], Table]] = {
    "per_class": per_class_table,
    "summary": summary_table,
    "detection": detection_table,
    "accuracy": accuracy_table,
    "failed": failed_table,
    "timing": timing_table,
}
TABLE_NAMES = tuple(TABLES)


def build_tables(runs: Sequence[Run]) -> list[Table]:
    """Every registered table; a failed job without results is only in the `failed` table."""
    with_results = [r for r in runs if not is_failed_without_results(r)]
    return [make(runs if name == "failed" else with_results) for name, make in TABLES.items()]


def is_failed_without_results(run: Run) -> bool:
    return run.failed is not None and not run.data
