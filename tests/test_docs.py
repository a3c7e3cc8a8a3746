"""The manual: the site builds in strict mode, the results pages are made from run folders, and no page speaks of anything but the project."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def test_docs_build_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]'; make install does)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a broken link, anchor or API reference fails
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "search_patterns" in api and "Search every class" in api  # docstrings rendered, not just names


def _results_pages():
    spec = importlib.util.spec_from_file_location("results_pages", REPO / "experiments" / "results_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_folder(root: Path, asr: float) -> Path:
    run = root / "outputs" / "train" / "runs" / "2030-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.width=32", "seed=3"]))
    classes = [{"class_index": i, "class_name": name, "canvas_split": "train", "canvas_index": 10 + i, "mask_l1": l1,
                "by_ratio": [{"pattern_ratio": 0.05, "pixels": 39, "asr": a, "asr_ci": [a - 0.02, a + 0.02], "asr_n": 900,
                              "base_rate": 0.01, "baselines": {"random": 0.02}, "baselines_ci": {"random": [0.0, 0.04]}}]}
               for i, (name, l1, a) in enumerate([("Trouser", 5.0, asr), ("Bag", 60.0, 0.3), ("Coat", 70.0, 0.4)])]
    verdict = {"detector": "patterns", "verdict": "backdoored", "reason": "class 0: a working pattern with anomaly index 6.5 > 2",
               "score": 6.5, "probability": None, "predicted_target": 0, "predicted_name": "Trouser",
               "threat_model": "clean_data", "classes": [0, 1, 2], "anomaly_index": [6.5, 0.4, 0.7], "flagged": [0],
               "threshold": 2.0}
    results = {"schema_version": 3, "run": {"dataset": "fashion_mnist", "model": "small_cnn", "setting": "natural",
                                            "seed": 3, "config": {"task_name": "train"}},
               "metrics": {"clean_acc": 0.9}, "search": {"pattern_ratios": [0.05], "figure": "patterns/grid.png"},
               "classes": classes, "timing": {"train": 30.0, "search": 5.0},
               "detection": verdict, "detectors": {"patterns": verdict},
               "environment": {"date": "2030-01-01T00:01:00+00:00", "platform": "Linux x86_64", "cpus": 2,
                               "python": "3.11.7", "torch": "2.14.1", "threads": 2, "gpu": None}}
    (run / "results.json").write_text(json.dumps(results))
    (run / "patterns").mkdir()
    (run / "patterns" / "grid.png").write_bytes(b"\x89PNG a figure")
    return run


def _claims_report(root: Path) -> Path:
    report = root / "outputs" / "sweeps" / "paper_claims" / "report"
    report.mkdir(parents=True)
    (report / "claims.md").write_text("# Claims\n\n| # | claim | verdict |\n|---|---|---|\n| 1 | natural patterns | **holds** |\n")
    job = report.parent / "claim=natural,seed=0"
    job.mkdir()
    job.joinpath("results.json").write_text(json.dumps({"environment": {"date": "2030-01-02T00:00:00+00:00", "cpus": 2,
                                                                        "platform": "Linux x86_64"}}))
    report.parent.joinpath("multirun.yaml").write_text(yaml.safe_dump(
        {"task_name": "train", "hydra": {"overrides": {"task": ["experiment=paper_claims"]}}}))
    return report


def test_results_pages_are_made_from_run_folders_and_follow_a_new_run(tmp_path):
    pages = _results_pages()
    out = tmp_path / "docs"
    run, report = _run_folder(tmp_path, asr=0.99), _claims_report(tmp_path)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"command": "python -m classwise.bench", "environment": {"date": "2030-01-03", "cpus": 2},
                                 "models": [{"model": "small_cnn 28x28", "(c) loop/batched": 1.6}]}))
    args = ["--run", str(run), "--claims", str(report), "--bench", str(bench),
            "--detection", str(tmp_path / "absent.json"), "--out", str(out)]
    pages.main(args)

    make_run = (out / "make-run.md").read_text()
    assert "`classwise-train model.width=32 seed=3`" in make_run  # the command, from Hydra's record
    assert "2030-01-01T00:01:00+00:00" in make_run and "Linux x86_64, 2 CPU cores, no GPU" in make_run
    assert "Trouser" in make_run and "0.990" in make_run and "backdoored: class 0 (Trouser)" in make_run and "threat model clean_data" in make_run
    assert "](make-run-grid.png)" in make_run and (out / "make-run-grid.png").exists()  # beside the page, not in outputs/
    claims = (out / "paper-claims.md").read_text()
    assert "`classwise-train -m experiment=paper_claims && classwise-report paper_claims`" in claims
    assert "natural patterns | **holds**" in claims and "2030-01-02" in claims
    assert "| small_cnn 28x28 | 1.6000 |" in (out / "bench.md").read_text()
    assert "Not generated yet" in (out / "detection-benchmark.md").read_text()

    # A new run: rerunning updates the page; a source that went away leaves its page as it was.
    results = json.loads((run / "results.json").read_text())
    results["classes"][0]["by_ratio"][0]["asr"] = 0.5
    (run / "results.json").write_text(json.dumps(results))
    bench.unlink()
    pages.main(args)
    assert "0.500" in (out / "make-run.md").read_text() and "0.990" not in (out / "make-run.md").read_text()
    assert "| small_cnn 28x28 | 1.6000 |" in (out / "bench.md").read_text()


# Words that belong to whoever built a page, not to the project (split so this file does not match itself).
OUTSIDE_WORDS = re.compile("|".join(["/wo" + "rk/", r"\bthe bri" + r"ef\b", r"\bthis ta" + r"sk\b", r"\bsessi" + r"on\b",
                                     "GPU machine was " + "lent"]), re.IGNORECASE)


def test_no_page_or_comment_speaks_of_anything_but_the_project():
    files = [REPO / "README.md", *(p for d in ("docs", "src", "conf", "experiments", "tests")
                                   for p in (REPO / d).rglob("*") if p.suffix in (".md", ".py", ".yaml", ".sh"))]
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE_WORDS.search(line)]
    assert not hits, "\n".join(hits)


def test_readme_links_lead_to_pages_that_exist():
    # The site's build checks its own links; the README sits outside it, so its links are checked here.
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert links and not missing, missing
