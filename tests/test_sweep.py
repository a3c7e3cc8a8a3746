"""Sweeps through the real CLI, skipping finished jobs, the report on a sweep, and W&B offline logging."""

from __future__ import annotations

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
