"""`classwise-report FOLDER [--out DIR]`: tables, plots and a static HTML gallery from every results.json under FOLDER.

FOLDER is a Hydra sweep folder (multirun/...), a single run, or any folder of runs. Writes into DIR
(default FOLDER/report):

  per_class / summary / detection / accuracy / failed  .md .tex .csv   the tables, one row per run (failed:
                                                               sweep jobs that failed, also printed as FAILED)
  <table>_seeds                               .md .tex .csv   the same over seeds: mean ± 95% interval, n
  claims.md                                                    the paper's claims with a verdict each (with
                                                               --population: claims 3 and 5 from a detector
                                                               benchmark's population too)
  asr_vs_ratio.png                                             mean ASR against the pattern ratio (bands
                                                               over seeds where a configuration has 2+)
  pattern_grid_<run>.png                                       each run's patterns/grid.png (a copy)
  gallery/index.html, gallery/img/<run>/...                    every run's patterns, filterable
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from classwise.reporting.aggregate import aggregate_tables, write_seed_tables
from classwise.reporting.claims import fill_shape_stats, read_population, write_claims
from classwise.reporting.formats import write_tables
from classwise.reporting.gallery import write_gallery
from classwise.reporting.plots import asr_vs_ratio, copy_pattern_grids
from classwise.reporting.runs import Run, find_runs
from classwise.reporting.tables import build_tables, is_failed_without_results


def make_report(root: str | Path, out: str | Path | None = None, runs: list[Run] | None = None,
                population: str | Path | None = None) -> tuple[list[Run], list[Path]]:
    """Write the whole report; returns the runs found and the files written (the gallery's images aside)."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    if runs is None:
        runs = find_runs(root, exclude=[out])
    out.mkdir(parents=True, exist_ok=True)
    fill_shape_stats(runs)  # runs written before patterns/shape.py existed
    written = write_tables(build_tables(runs), out)
    with_results = [r for r in runs if not is_failed_without_results(r)]
    written += write_seed_tables(aggregate_tables(with_results), out)
    written.append(write_claims(with_results, out, read_population(population)))
    written.append(asr_vs_ratio(with_results, out / "asr_vs_ratio.png"))
    written += copy_pattern_grids(with_results, out)
    written.append(write_gallery(with_results, out, root=root))
    return runs, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="classwise-report",
        description="Tables (Markdown, LaTeX, CSV), plots and a static HTML gallery from every "
                    "results.json under a folder (a Hydra sweep folder or any folder of runs).")
    parser.add_argument("folder", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: FOLDER/report)")
    parser.add_argument("--population", type=Path, default=None,
                        help="a detector benchmark's detection_bench.json: claims 3 and 5 also read from its population")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"classwise-report: error: folder={str(args.folder)!r} is not a folder; accepted: a folder holding "
              "results.json files", file=sys.stderr)
        return 2
    if args.population is not None and not args.population.is_file():
        print(f"classwise-report: error: --population={args.population} is not a file; accepted: a detector benchmark's "
              "report/<population>/detection_bench.json (make detect-bench)", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.folder / "report"
    runs = find_runs(args.folder, exclude=[out])
    if not runs:
        # Exit 1, not 2: the folder is there, its runs are not (yet): a sweep that wrote nothing, not a typo.
        print(f"classwise-report: error: folder={str(args.folder)!r} holds no results.json (nor a FAILED job); accepted: "
              "a sweep or run folder (outputs/sweeps/<name>, outputs/train/runs/<time>)", file=sys.stderr)
        return 1
    runs, written = make_report(args.folder, out, runs, args.population)
    print(f"classwise-report: {len(runs)} runs ({sum(r.has_classes for r in runs)} with class-wise patterns) "
          f"-> {out}")
    for path in written:
        print(f"  {path}")
    failed = [r for r in runs if r.failed is not None]
    if failed:
        print(f"FAILED: {len(failed)} job(s) (traceback in each folder's FAILED file)")
        for run in failed:
            print(f"  {run.run_id}: {run.failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
