"""Aggregation over seeds: every registered table's rows grouped by configuration, mean +- 95% interval, n.

A run's configuration is its folder with the seed taken out (`claim=badnets,seed=2` -> `claim=badnets`)
and its recorded, resolved config with the seed taken out, so the seeds of one sweep cell fall into one
group whatever the sweep's other keys are, and runs that differ in any other key (two trainers written
to one folder name) never do. Within a group:

- a numeric column becomes its mean over the group's rows, its 95% Student-t half-width
  (t_{0.975, n-1} * sd / sqrt(n); blank for n < 2) and n, the number of rows with a value;
- a categorical column (a class index such as `predicted_target`, a text, a list) shows its value when
  every seed agrees, else each value with how many seeds gave it (`7 x2, 3 x1`);
- `class_index` (per-class rows) is part of the group, so each class is aggregated on its own;
- a run's own interval column (`[low, high]` of its eval images, e.g. `mean_asr_ci@0.05`) is left to
  the per-run table: over seeds, the t-interval of the run means is the one that counts.

Markdown and LaTeX show `mean ± half-width`; the CSV keeps mean, half-width and n in their own columns.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from classwise.reporting.formats import cell_pretty, to_latex, to_markdown, write_csv
from classwise.reporting.results import first_difference
from classwise.reporting.runs import Run, as_number, as_text, natural_key
from classwise.reporting.tables import TABLES, Table

# Hydra's default sweep subdir is `<job number>_<overrides>`: the number differs per seed, so it goes too.
JOB_NUMBER = re.compile(r"(^|/)\d+_")
SEED_PART = re.compile(r"(^|[,/_])seed[=_-]?\d+(?=$|[,/_])")
# Row identity inside a run: grouped on, never averaged.
ROW_KEYS = ("class_index",)
# Integer-valued but categorical: a class, not a quantity.
CATEGORICAL = re.compile(r"(^|_)(predicted_target|max_anomaly_class|true_target|class_index|target_class)$")
DROPPED = ("run", "seed")
# What the seed sets besides `seed` itself (conf/claim/: the backdoor target moves with the seed), and
# what says where a run reports rather than what it computed.
SEED_SET = ("seed", "target_class", "paths", "logger", "resume", "output_dir", "dirpath", "default_root_dir")


def config_of(run_id: str) -> str:
    """The run folder without its seed part: the seeds of one configuration share it."""
    out = SEED_PART.sub("", JOB_NUMBER.sub(r"\1", run_id)).strip(",/_")
    return out or "(all)"


def config_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Each run's group: its folder minus the seed, plus the first key where its resolved config (minus the
    seed) differs from the first run of that folder name with another config."""
    labels: dict[str, str] = {}
    seen: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: natural_key(r.run_id)):
        base, config = config_of(run.run_id), run.info.get("config") or {}
        configs = seen.setdefault(base, [])
        match = next((i for i, c in enumerate(configs) if first_difference(c, config, SEED_SET) is None), None)
        if match is None:
            configs.append(config)
            match = len(configs) - 1
        if match == 0:
            labels[run.run_id] = base
        else:
            key, _, value = first_difference(configs[0], config, SEED_SET)
            labels[run.run_id] = f"{base} [{key}={value}]"
    return labels


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with its 95% t half-width (None for n < 2)."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def pretty(self, digits: int = 3) -> str:
        text = f"{self.mean:.{digits}f}"
        return text if self.half is None else f"{text} ± {self.half:.{digits}f}"


def estimate(values: Iterable[Any]) -> Estimate | None:
    """Mean and 95% t interval of the numbers among `values` (None, NaN and non-numbers ignored)."""
    nums = [v for v in (as_number(x) for x in values if not isinstance(x, bool)) if v is not None and not math.isnan(v)]
    if not nums:
        return None
    n = len(nums)
    mean = statistics.fmean(nums)
    if n < 2:
        return Estimate(mean, None, n)
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(nums) / math.sqrt(n)
    return Estimate(mean, half, n)


def _is_numeric(table: Table, col: str) -> bool:
    if CATEGORICAL.search(col) or col in DROPPED:
        return False
    vals = [r.get(col) for r in table.rows if r.get(col) is not None]
    return bool(vals) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)


def _is_interval(table: Table, col: str) -> bool:
    """A per-run interval ([low, high] of one run's eval images): over seeds the t-interval replaces it."""
    vals = [r.get(col) for r in table.rows if r.get(col) is not None]
    return bool(vals) and all(isinstance(v, list | tuple) and len(v) == 2
                              and all(isinstance(x, int | float) for x in v) for v in vals)


def _categorical(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    counts = Counter(cell_pretty(v) for v in present)
    if len(counts) == 1 and len(present) == len(values):
        return present[0]
    return ", ".join(f"{k} x{c}" for k, c in sorted(counts.items(), key=lambda kc: (-kc[1], kc[0])))


@dataclass
class SeedTable:
    """An aggregated table: `config`, the row keys, `n`, then each column (Estimate or categorical value)."""

    name: str
    title: str
    columns: list[str]
    numeric: list[str]
    rows: list[dict[str, Any]]

    def pretty(self) -> Table:
        rows = [{c: (v.pretty() if isinstance(v, Estimate) else v) for c, v in r.items()} for r in self.rows]
        return Table(self.name, self.title, self.columns, rows)

    def flat(self) -> Table:
        cols: list[str] = []
        for c in self.columns:
            cols += [c, f"{c}_ci95", f"{c}_n"] if c in self.numeric else [c]
        rows = []
        for r in self.rows:
            row: dict[str, Any] = {}
            for c, v in r.items():
                if isinstance(v, Estimate):
                    row.update({c: v.mean, f"{c}_ci95": v.half, f"{c}_n": v.n})
                else:
                    row[c] = v
            rows.append(row)
        return Table(self.name, self.title, cols, rows)


def aggregate_table(table: Table, labels: dict[str, str] | None = None) -> SeedTable:
    """Group `table`'s rows by configuration (and class), aggregate every other column over seeds.

    `labels`: each run's configuration (`config_labels`); without it, the folder minus its seed."""
    keys = [k for k in ROW_KEYS if k in table.columns]
    numeric = [c for c in table.columns if _is_numeric(table, c) and c not in keys]
    # Each run's own eval-sampling interval stays in the per-run table; across seeds the spread of
    # the run means (the t-interval) is the interval that counts.
    other = [c for c in table.columns
             if c not in DROPPED and c not in keys and c not in numeric and not _is_interval(table, c)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in table.rows:
        run_id = as_text(row.get("run"))
        key = ((labels or {}).get(run_id) or config_of(run_id), *(row.get(k) for k in keys))
        groups.setdefault(key, []).append(row)
    rows = []
    for key in sorted(groups, key=lambda k: [natural_key(as_text(x)) for x in k]):
        members = groups[key]
        out: dict[str, Any] = {"config": key[0], **dict(zip(keys, key[1:], strict=True)), "n": len(members)}
        for c in other:
            out[c] = _categorical([m.get(c) for m in members])
        for c in numeric:
            out[c] = estimate(m.get(c) for m in members)
        rows.append(out)
    columns = ["config", *keys, "n", *other, *numeric]
    title = f"{table.title}; mean ± 95% t-interval over seeds (n runs per row)"
    return SeedTable(f"{table.name}_seeds", title, columns, numeric, rows)


def aggregate_tables(runs: Sequence[Run]) -> list[SeedTable]:
    """Every registered table (tables.TABLES), aggregated over seeds."""
    labels = config_labels(runs)
    return [aggregate_table(make(runs), labels) for make in TABLES.values()]


def write_seed_tables(tables: Sequence[SeedTable], out: str | Path) -> list[Path]:
    """<out>/<name>_seeds.md/.tex (mean ± half-width) and .csv (mean, _ci95 and _n columns)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        md, tex, csv_path = (out / f"{t.name}.{ext}" for ext in ("md", "tex", "csv"))
        md.write_text(to_markdown(t.pretty()))
        tex.write_text(to_latex(t.pretty()))
        write_csv(t.flat(), csv_path)
        written += [md, tex, csv_path]
    return written


def config_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by configuration (seed removed from the folder), in folder order."""
    groups: dict[str, list[Run]] = {}
    labels = config_labels(runs)
    for run in sorted(runs, key=lambda r: natural_key(r.run_id)):
        groups.setdefault(labels[run.run_id], []).append(run)
    return groups
