"""Runs found under a folder, and the report's tables (Markdown, LaTeX, CSV) built from their results.json.

Every field is read defensively: a run may lack `classes`, `detection`, `robust_acc`, ... and a
baseline may appear in one run only. A table's columns are the union of what the runs hold; a
missing value is a blank cell, never an error.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classwise.reporting.results import RESULTS_FILE

TABLE_NAMES = ("per_class", "summary", "detection", "accuracy")
FORMATS = ("md", "tex", "csv")


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run folder: its id (the folder relative to the report root), a file-safe slug, its results."""

    run_id: str
    slug: str
    dir: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        info = self.data.get("run")
        return info if isinstance(info, dict) else {}

    @property
    def metrics(self) -> dict[str, Any]:
        m = self.data.get("metrics")
        return m if isinstance(m, dict) else {}

    @property
    def dataset(self) -> str:
        return _text(self.info.get("dataset"))

    @property
    def model(self) -> str:
        return _text(self.info.get("model"))

    @property
    def setting(self) -> str:
        return _text(self.info.get("setting"))

    @property
    def classes(self) -> list[dict[str, Any]]:
        cls = self.data.get("classes")
        return [c for c in cls if isinstance(c, dict)] if isinstance(cls, list) else []

    @property
    def has_classes(self) -> bool:
        return bool(self.classes)

    def label(self) -> str:
        parts = [p for p in (self.setting, "/".join(p for p in (self.dataset, self.model) if p)) if p]
        return f"{' · '.join(parts)} ({self.run_id})" if parts else self.run_id


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def natural_key(text: str) -> list:
    """Sort `job_2` before `job_10` (Hydra sweep folders are numbered)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"
    return slug


def find_runs(root: str | Path, exclude: Sequence[str | Path] = ()) -> list[Run]:
    """Every `results.json` under `root` (the root itself included), sorted by folder, unreadable ones skipped."""
    root = Path(root).resolve()
    excluded = [Path(e).resolve() for e in exclude]
    paths = sorted(root.rglob(RESULTS_FILE), key=lambda p: natural_key(p.relative_to(root).as_posix()))
    runs: list[Run] = []
    used: set[str] = set()
    for path in paths:
        if not path.is_file() or any(path.resolve().is_relative_to(e) for e in excluded):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"classwise-report: skipping {path}: {err}", file=sys.stderr)
            continue
        if not isinstance(data, dict):
            print(f"classwise-report: skipping {path}: not a JSON object", file=sys.stderr)
            continue
        rel = path.parent.relative_to(root).as_posix()
        run_id = root.name if rel in ("", ".") else rel
        slug = base = slugify(run_id)
        n = 2
        while slug in used:
            slug, n = f"{base}_{n}", n + 1
        used.add(slug)
        runs.append(Run(run_id=run_id, slug=slug, dir=path.parent, data=data))
    return runs


# ----------------------------------------------------------------------------- numbers from runs


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def ratio_key(value: Any) -> str:
    """A pattern ratio as a column suffix: 0.01 -> '0.01' (no float noise)."""
    num = _num(value)
    return _text(value) if num is None else f"{num:g}"


def by_ratio(cls: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A class's `by_ratio` entries keyed by ratio_key."""
    rows = cls.get("by_ratio")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(rows, list):
        for r in rows:
            if isinstance(r, dict) and "pattern_ratio" in r:
                out[ratio_key(r["pattern_ratio"])] = r
    return out


def baselines_of(entry: dict[str, Any]) -> dict[str, Any]:
    b = entry.get("baselines")
    return b if isinstance(b, dict) else {}


def all_ratios(runs: Iterable[Run]) -> list[str]:
    found: dict[str, float] = {}
    for run in runs:
        for cls in run.classes:
            for key in by_ratio(cls):
                num = _num(key)
                found[key] = num if num is not None else math.inf
    return sorted(found, key=lambda k: (found[k], k))


def all_baselines(runs: Iterable[Run]) -> list[str]:
    """Baseline names present anywhere, `random` first, then alphabetically."""
    names: set[str] = set()
    for run in runs:
        for cls in run.classes:
            for entry in by_ratio(cls).values():
                names.update(str(k) for k in baselines_of(entry))
    return sorted(names, key=lambda n: (n != "random", n))


def mean(values: Iterable[Any]) -> float | None:
    nums = [v for v in (_num(x) for x in values) if v is not None and not math.isnan(v)]
    return sum(nums) / len(nums) if nums else None


def run_means(run: Run, ratios: Sequence[str], baselines: Sequence[str]) -> dict[str, float | None]:
    """Mean over classes, per ratio: `asr@r`, `base_rate@r` and each `<baseline>@r`."""
    out: dict[str, float | None] = {}
    per_class = [by_ratio(c) for c in run.classes]
    for r in ratios:
        entries = [pc[r] for pc in per_class if r in pc]
        out[f"asr@{r}"] = mean(e.get("asr") for e in entries)
        for b in baselines:
            out[f"{b}@{r}"] = mean(baselines_of(e).get(b) for e in entries)
        out[f"base_rate@{r}"] = mean(e.get("base_rate") for e in entries)
    return out


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]


def per_class_table(runs: Sequence[Run]) -> Table:
    ratios, baselines = all_ratios(runs), all_baselines(runs)
    ratio_cols = [c for r in ratios for c in (f"asr@{r}", *(f"{b}@{r}" for b in baselines), f"base_rate@{r}")]
    columns = ["run", "dataset", "model", "setting", "class_index", "class_name", "canvas", "mask_l1", *ratio_cols]
    rows = []
    for run in runs:
        for cls in run.classes:
            row: dict[str, Any] = {
                "run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
                "class_index": cls.get("class_index"), "class_name": cls.get("class_name"),
                "canvas": _canvas(cls), "mask_l1": cls.get("mask_l1"),
            }
            entries = by_ratio(cls)
            for r in ratios:
                e = entries.get(r, {})
                row[f"asr@{r}"] = e.get("asr")
                for b in baselines:
                    row[f"{b}@{r}"] = baselines_of(e).get(b)
                row[f"base_rate@{r}"] = e.get("base_rate")
            rows.append(row)
    return Table("per_class", "Per-class attack success rate (ASR) of each pattern", columns, rows)


def _canvas(cls: dict[str, Any]) -> str:
    split, index = cls.get("canvas_split"), cls.get("canvas_index")
    if split is None and index is None:
        return ""
    return f"{_text(split)}[{_text(index)}]" if split is not None else _text(index)


def summary_table(runs: Sequence[Run]) -> Table:
    ratios, baselines = all_ratios(runs), all_baselines(runs)
    mean_cols = [f"mean_asr@{r}" for r in ratios]
    mean_cols += [f"mean_{b}@{r}" for b in baselines for r in ratios]
    mean_cols += [f"mean_base_rate@{r}" for r in ratios]
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
        rows.append(row)
    return Table("summary", "One row per run: accuracy and mean ASR over classes per pattern ratio", columns, rows)


def _detection_cols(prefix: str) -> list[str]:
    return [f"{prefix}predicted_target", f"{prefix}max_anomaly_index", f"{prefix}max_anomaly_class",
            f"{prefix}target_anomaly_index", f"{prefix}flagged", f"{prefix}seconds"]


def _detection_values(block: Any, target: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        return {}
    classes = block.get("classes") if isinstance(block.get("classes"), list) else []
    index = block.get("anomaly_index") if isinstance(block.get("anomaly_index"), list) else []
    pairs = [(c, v) for c, v in zip(classes, index, strict=False) if _num(v) is not None]
    best = max(pairs, key=lambda p: _num(p[1])) if pairs else (None, None)
    target_index = next((v for c, v in zip(classes, index, strict=False) if target is not None and c == target), None)
    return {
        f"{prefix}predicted_target": block.get("predicted_target"),
        f"{prefix}max_anomaly_index": best[1], f"{prefix}max_anomaly_class": best[0],
        f"{prefix}target_anomaly_index": target_index,
        f"{prefix}flagged": block.get("flagged"), f"{prefix}seconds": block.get("seconds"),
    }


def detection_table(runs: Sequence[Run]) -> Table:
    columns = ["run", "dataset", "model", "setting", "trigger", "backdoor_asr", "true_target",
               *_detection_cols(""), *_detection_cols("nc_")]
    rows = []
    for run in runs:
        det = run.data.get("detection")
        if not isinstance(det, dict):
            continue
        backdoor = run.metrics.get("backdoor") if isinstance(run.metrics.get("backdoor"), dict) else {}
        target = det.get("true_target")
        if target is None:
            target = backdoor.get("target_class")
        baselines = run.data.get("detection_baselines")
        nc = baselines.get("neural_cleanse") if isinstance(baselines, dict) else None
        row: dict[str, Any] = {
            "run": run.run_id, "dataset": run.dataset, "model": run.model, "setting": run.setting,
            "trigger": backdoor.get("trigger"), "backdoor_asr": run.metrics.get("backdoor_asr"),
            "true_target": target,
        }
        row.update(_detection_values(det, target, ""))
        row.update(_detection_values(nc, target, "nc_"))
        rows.append(row)
    return Table("detection", "Backdoor target detection: class-wise patterns (ours) and Neural Cleanse (nc_)",
                 columns, rows)


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


def build_tables(runs: Sequence[Run]) -> list[Table]:
    return [per_class_table(runs), summary_table(runs), detection_table(runs), accuracy_table(runs)]


# ----------------------------------------------------------------------------- formatting


def cell_raw(value: Any) -> str:
    """A CSV cell: full precision, blank for missing, lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def cell_pretty(value: Any) -> str:
    """A Markdown/LaTeX cell: floats to 4 decimals (2 from 10 up), blank for missing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(cell_pretty(v) for v in value) + "]"
    return str(value)


def _numeric(table: Table, col: str) -> bool:
    vals = [r.get(col) for r in table.rows if r.get(col) is not None]
    return bool(vals) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)


def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {table.name}", "", table.title, ""]
    if not table.rows:
        lines.append("_no runs with data for this table_")
        return "\n".join(lines) + "\n"
    lines.append("| " + " | ".join(esc(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if _numeric(table, c) else "---" for c in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(esc(cell_pretty(row.get(c))) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    spec = "".join("r" if _numeric(table, c) else "l" for c in table.columns)
    lines = [f"% {table.name}: {table.title}", "% generated by classwise-report; needs \\usepackage{booktabs}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(tex_escape(c) for c in table.columns) + r" \\", "\\midrule"]
    for row in table.rows:
        lines.append(" & ".join(tex_escape(cell_pretty(row.get(c))) for c in table.columns) + r" \\")
    if not table.rows:
        lines.append(f"\\multicolumn{{{len(table.columns)}}}{{l}}{{no runs with data for this table}} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(table: Table, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([cell_raw(row.get(c)) for c in table.columns])


def write_tables(tables: Sequence[Table], out: str | Path) -> list[Path]:
    """Each table as <out>/<name>.md, .tex and .csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        md, tex, csv_path = (out / f"{table.name}.{ext}" for ext in FORMATS)
        md.write_text(to_markdown(table))
        tex.write_text(to_latex(table))
        write_csv(table, csv_path)
        written += [md, tex, csv_path]
    return written
