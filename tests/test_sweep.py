"""Sweeps through the real CLI, skipping finished jobs, the report on a sweep, and W&B offline logging."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from tests.conftest import run_cli

SWEEP_ARGS = ("--multirun", "debug=fast", "seed=0,1", "search.pattern_ratios=[0.02,0.05]")


@pytest.fixture(scope="module")
def two_seed_sweep(tmp_path_factory):
    """A 2-seed sweep through the real CLI and its report: (root, sweep folder, report folder)."""
    root = tmp_path_factory.mktemp("sweep2")
    sweep = root / "sweep"
    run_cli("train", *SWEEP_ARGS, f"hydra.sweep.dir={sweep}", root=root)
    run_cli("report", str(sweep), "--out", str(root / "report"), root=root)
    return root, sweep, root / "report"


def _csv_rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _by_hand(values):
    """Mean and 95% t half-width of two numbers: t_{0.975,1} = 12.7062 (tables), sd / sqrt(2)."""
    assert len(values) == 2
    return statistics.fmean(values), 12.7062047 * statistics.stdev(values) / math.sqrt(2)


def _class_mean(results, ratio, key):
    vals = []
    for c in results["classes"]:
        e = next(b for b in c["by_ratio"] if b["pattern_ratio"] == ratio)
        vals.append(e[key] if key in e else e["baselines"][key])
    return statistics.fmean(vals)


def test_two_job_sweep_then_report_then_resume(two_seed_sweep):
    tmp_path, sweep, report = two_seed_sweep
    results = sorted(sweep.rglob("results.json"))
    assert len(results) == 2
    assert {json.loads(p.read_text())["run"]["seed"] for p in results} == {0, 1}
    again = run_cli("train", *SWEEP_ARGS, f"hydra.sweep.dir={sweep}", root=tmp_path)
    assert again.stdout.count("skipped:") == 2
    summary = (report / "summary.md").read_text()
    assert "seed=0" in summary and "seed=1" in summary
    assert (report / "gallery" / "index.html").exists()
    assert (report / "asr_vs_ratio.png").exists()


def test_seed_aggregation_and_claims_by_hand(two_seed_sweep):
    _, sweep, report = two_seed_sweep
    runs = [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]
    # Every class and ratio carries the "simpler" number of claim 4.
    assert all(isinstance(e["components"], int) and e["components"] >= 1
               for r in runs for c in r["classes"] for e in c["by_ratio"])
    assert all(c["mask_tv"] > 0 for r in runs for c in r["classes"])
    # Summary over seeds: one row (the two seeds of one configuration), mean and interval by hand.
    (row,) = _csv_rows(report / "summary_seeds.csv")
    assert row["n"] == "2"
    mean, half = _by_hand([_class_mean(r, 0.05, "asr") for r in runs])
    assert float(row["mean_asr@0.05"]) == pytest.approx(mean, abs=1e-9)
    assert float(row["mean_asr@0.05_ci95"]) == pytest.approx(half, rel=1e-5)
    assert row["mean_asr@0.05_n"] == "2"
    assert "mean_asr_ci@0.05" not in row  # each run's own eval interval stays in summary.csv
    # Per class: one row per class, class 1's ASR at 2% by hand.
    rows = _csv_rows(report / "per_class_seeds.csv")
    assert sorted(int(r["class_index"]) for r in rows) == [0, 1, 2, 3]
    c1 = next(r for r in rows if r["class_index"] == "1")
    vals = [next(b["asr"] for b in r["classes"][1]["by_ratio"] if b["pattern_ratio"] == 0.02) for r in runs]
    assert float(c1["asr@0.02"]) == pytest.approx(_by_hand(vals)[0], abs=1e-9)
    assert float(c1["asr@0.02_ci95"]) == pytest.approx(_by_hand(vals)[1], rel=1e-5)
    assert "±" in (report / "summary_seeds.md").read_text()
    # claims.md: the rule is stated, the five claims have rows, claim 1's verdict follows the rule.
    text = (report / "claims.md").read_text()
    assert "**Verdict rule**" in text and "interval" in text
    table = {cells[1]: cells for line in text.splitlines() if line.startswith("| ")
             for cells in [[c.strip() for c in line.split("|")]]}
    for number in ("1", "4a", "4b", "5"):
        assert number in table, f"claim {number} missing from claims.md"
    d_mean, d_half = _by_hand([_class_mean(r, 0.05, "asr") - _class_mean(r, 0.05, "random") for r in runs])
    expected = ("holds" if d_mean - d_half > 0 else "does not hold" if d_mean + d_half < 0 else "inconclusive")
    assert table["1"][4] == f"{d_mean:.3f} ± {d_half:.3f}"
    assert table["1"][5] == "2"
    assert table["1"][6] == f"**{expected}**"
    # No adversarial run in this sweep: claim 4 cannot be decided.
    assert table["4a"][6] == "**inconclusive**"


def test_sweep_with_a_failing_job_finishes_the_others_exits_non_zero_and_is_reported(tmp_path):
    """Job 0 fails at runtime (Lightning rejects max_epochs=-5 when the Trainer is built), job 1 trains."""
    sweep = tmp_path / "sweep"
    proc = run_cli("train", "--multirun", "debug=fast", "trainer.limit_train_batches=2", "trainer.max_epochs=-5,1",
                   "search.steps=4", f"hydra.sweep.dir={sweep}", root=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = sorted(sweep.rglob("FAILED"))
    assert len(failed) == 1 and failed[0].parent.name.startswith("0_") and failed[0].parent.name.endswith("max_epochs=-5")
    assert "1 job(s) of this multirun failed" in proc.stderr and failed[0].parent.name in proc.stderr
    assert len(list(sweep.rglob("results.json"))) == 1  # the job after the failed one still ran
    error = failed[0].read_text().splitlines()[0]
    assert "Exception" in error or "Error" in error
    report = run_cli("report", str(sweep), "--out", str(tmp_path / "report"), root=tmp_path)
    assert "FAILED: 1 job(s)" in report.stdout and error in report.stdout
    with open(tmp_path / "report" / "failed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["error"]) for r in rows] == [(failed[0].parent.name, error)]
    assert "max_epochs" in error  # the cause, not only the wrapper's "Error in call to target"
    assert "max_epochs=-5" not in (tmp_path / "report" / "summary.md").read_text()


def test_a_search_sweep_with_a_missing_checkpoint_records_it_and_searches_the_others(tmp_path):
    """One population member whose training failed has no checkpoint: its job fails, the next one runs."""
    run_cli("train", "debug=fast", "search.enabled=false", root=tmp_path, run_dir=tmp_path / "train")
    sweep = tmp_path / "sweep"
    proc = run_cli("search", "--multirun", "debug=fast", f"checkpoint={tmp_path / 'gone'},{tmp_path / 'train'}",
                   "search.steps=2", "detector=none", f"hydra.sweep.dir={sweep}", root=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (failed,) = sweep.rglob("FAILED")  # job folders are named by the override, here a path
    assert "/0_checkpoint=" in str(failed) and failed.parent.name.startswith("gone,")
    assert "checkpoint=" in failed.read_text().splitlines()[0] and "no such file" in failed.read_text().splitlines()[0]
    (done,) = sweep.rglob("results.json")
    assert "/1_checkpoint=" in str(done) and json.loads(done.read_text())["detection"]["verdict"] == "abstained"


def test_wandb_offline_run_has_the_patterns_table_and_images(tmp_path):
    run_cli("train", "debug=fast", "logger=wandb", root=tmp_path, run_dir=tmp_path / "run",
            env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("patterns_*.table.json"))
    assert tables, "no patterns table in the offline run"
    table = json.loads(tables[0].read_text())
    assert "canvas" in table["columns"] and len(table["data"]) == 4
    images = list(runs[0].rglob("*.png"))
    assert len(images) >= 12  # canvas, mask and pattern per class


def test_claims_transfer_script_on_folders_named_like_the_claims_sweep(two_seed_sweep, tmp_path):
    """experiments/paper_claims_transfer.sh on run folders named as experiment=paper_claims names them
    (`claim=natural,seed=0`: '=' and ',' that Hydra's override grammar must get quoted), then rerun."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root, sweep, _ = two_seed_sweep
    claims = tmp_path / "paper_claims"
    for seed in (0, 1):
        (run,) = [p.parent for p in sweep.rglob("results.json") if f"seed={seed}" in p.parent.name]
        shutil.copytree(run, claims / f"claim=natural,seed={seed}")
    script = Path(__file__).resolve().parents[1] / "experiments" / "paper_claims_transfer.sh"
    env = {**os.environ, "SWEEP": str(claims), "SEEDS": "0 1", "BIN": str(Path(sys.executable).parent),
           "CLASSWISE_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed, other in ((0, 1), (1, 0)):
        res = json.loads((claims / "transfer_natural" / f"seed={seed}" / "results.json").read_text())
        source = json.loads((claims / f"claim=natural,seed={other}" / "results.json").read_text())
        assert res["transfer"]["pattern_ratios"] == [0.02, 0.05]
        assert [c["class_index"] for c in res["transfer"]["classes"]] == [c["class_index"] for c in source["classes"]]
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skip ") == 2
