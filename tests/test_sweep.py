"""Sweeps through the real CLI, skipping finished jobs, the report on a sweep, and W&B offline logging."""

from __future__ import annotations

import csv
import json

from tests.conftest import run_cli


def test_two_job_sweep_then_report_then_resume(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("--multirun", "debug=fast", "seed=0,1", f"hydra.sweep.dir={sweep}")
    run_cli("train", *args, root=tmp_path)
    results = sorted(sweep.rglob("results.json"))
    assert len(results) == 2
    assert {json.loads(p.read_text())["run"]["seed"] for p in results} == {0, 1}
    again = run_cli("train", *args, root=tmp_path)
    assert again.stdout.count("skipped:") == 2
    run_cli("report", str(sweep), "--out", str(tmp_path / "report"), root=tmp_path)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "seed=0" in summary and "seed=1" in summary
    assert (tmp_path / "report" / "gallery" / "index.html").exists()
    assert (tmp_path / "report" / "asr_vs_ratio.png").exists()


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
