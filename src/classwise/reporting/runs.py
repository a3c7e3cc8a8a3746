"""Runs found under a folder, and the numbers a report reads from their results.json.

Every field is read defensively: a run may lack `classes`, `detection`, `robust_acc`, ... and a
baseline may appear in one run only; a missing value is None, never an error.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classwise.reporting.results import RESULTS_FILE

FAILED = "FAILED"  # written by classwise.config.cli_errors into a failed sweep job's folder


@dataclass
class Run:
    """One run folder: its id (the folder relative to the report root), a file-safe slug, its results."""

    run_id: str
    slug: str
    dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None  # a failed sweep job: the first line of its FAILED file (the error)

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
        return as_text(self.info.get("dataset"))

    @property
    def model(self) -> str:
        return as_text(self.info.get("model"))

    @property
    def setting(self) -> str:
        return as_text(self.info.get("setting"))

    @property
    def classes(self) -> list[dict[str, Any]]:
        cls = self.data.get("classes")
        return [c for c in cls if isinstance(c, dict)] if isinstance(cls, list) else []

    @property
    def has_classes(self) -> bool:
        return bool(self.classes)

    @property
    def detectors(self) -> dict[str, dict[str, Any]]:
        """Every detector's block by name (`patterns` is ours, also in older runs' `detection`)."""
        from classwise.reporting.results import detector_blocks

        return {k: v for k, v in detector_blocks(self.data).items() if isinstance(v, dict)}

    @property
    def verdict(self) -> dict[str, Any]:
        """The run's verdict block (results.json `detection` from schema 3 on; {} before)."""
        det = self.data.get("detection")
        return det if isinstance(det, dict) and "verdict" in det else {}

    def label(self) -> str:
        parts = [p for p in (self.setting, "/".join(p for p in (self.dataset, self.model) if p)) if p]
        return f"{' · '.join(parts)} ({self.run_id})" if parts else self.run_id


def as_text(value: Any) -> str:
    return "" if value is None else str(value)


def natural_key(text: str) -> list:
    """Sort `job_2` before `job_10` (Hydra sweep folders are numbered)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"
    return slug


def find_runs(root: str | Path, exclude: Sequence[str | Path] = ()) -> list[Run]:
    """Every `results.json` under `root` (the root itself included), sorted by folder, unreadable ones skipped;
    also every failed sweep job (a folder with a FAILED file, with or without results), `failed` set."""
    root = Path(root).resolve()
    excluded = [Path(e).resolve() for e in exclude]
    paths = sorted({p.parent / RESULTS_FILE for p in (*root.rglob(RESULTS_FILE), *root.rglob(FAILED))},
                   key=lambda p: natural_key(p.relative_to(root).as_posix()))
    runs: list[Run] = []
    used: set[str] = set()
    for path in paths:
        if any(path.resolve().is_relative_to(e) for e in excluded):
            continue
        failed = _failure(path.parent / FAILED)
        data: Any = {}
        if path.is_file():
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
        runs.append(Run(run_id=run_id, slug=slug, dir=path.parent, data=data, failed=failed))
    return runs


def _failure(path: Path) -> str | None:
    """The first line of a FAILED file (the error in one line), or None when the job did not fail."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[0].strip() if lines else "failed"


def as_number(value: Any) -> float | None:
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
    num = as_number(value)
    return as_text(value) if num is None else f"{num:g}"


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
                num = as_number(key)
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
    nums = [v for v in (as_number(x) for x in values) if v is not None and not math.isnan(v)]
    return sum(nums) / len(nums) if nums else None


def run_means(run: Run, ratios: Sequence[str], baselines: Sequence[str]) -> dict[str, float | None]:
    """Mean over classes, per ratio: `asr@r`, `base_rate@r`, `components@r` and each `<baseline>@r`."""
    out: dict[str, float | None] = {}
    per_class = [by_ratio(c) for c in run.classes]
    for r in ratios:
        entries = [pc[r] for pc in per_class if r in pc]
        out[f"asr@{r}"] = mean(e.get("asr") for e in entries)
        for b in baselines:
            out[f"{b}@{r}"] = mean(baselines_of(e).get(b) for e in entries)
        out[f"base_rate@{r}"] = mean(e.get("base_rate") for e in entries)
        out[f"components@{r}"] = mean(e.get("components") for e in entries)
    return out


def ci_of(entry: dict[str, Any], name: str = "asr", baseline: str | None = None) -> list[float] | None:
    """The stored 95% interval [lo, hi] of a rate in a by_ratio entry (None before schema 2)."""
    if baseline is None:
        ci = entry.get(f"{name}_ci")
    else:
        cis = entry.get("baselines_ci")
        ci = cis.get(baseline) if isinstance(cis, dict) else None
    return ci if isinstance(ci, list) and len(ci) == 2 else None


def n_of(entry: dict[str, Any], name: str = "asr", baseline: str | None = None) -> int | None:
    """Images a rate was measured on (None before schema 2)."""
    if baseline is None:
        n = entry.get(f"{name}_n")
    else:
        ns = entry.get("baselines_n")
        n = ns.get(baseline) if isinstance(ns, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def run_mean_intervals(run: Run, ratios: Sequence[str], baselines: Sequence[str]) -> dict[str, list[float] | None]:
    """95% interval of each mean in `run_means` (`asr_ci@r`, `<baseline>_ci@r`, `base_rate_ci@r`)."""
    from classwise.intervals import mean_interval

    out: dict[str, list[float] | None] = {}
    per_class = [by_ratio(c) for c in run.classes]

    def interval(entries, name="asr", baseline=None):
        values = [as_number(e.get(name) if baseline is None else baselines_of(e).get(baseline)) for e in entries]
        ns = [n_of(e, name, baseline) for e in entries]
        if not entries or any(v is None for v in values):
            return None
        ci = mean_interval(values, ns)
        return [round(ci[0], 4), round(ci[1], 4)] if ci else None

    for r in ratios:
        entries = [pc[r] for pc in per_class if r in pc]
        out[f"asr_ci@{r}"] = interval(entries)
        for b in baselines:
            out[f"{b}_ci@{r}"] = interval([e for e in entries if b in baselines_of(e)], baseline=b)
        out[f"base_rate_ci@{r}"] = interval(entries, "base_rate")
    return out
