"""classwise-report: tables, plots and the HTML gallery from hand-written results.json files (no training)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from classwise.report import main, make_report  # noqa: E402
from classwise.reporting.formats import FORMATS, tex_escape  # noqa: E402
from classwise.reporting.tables import TABLE_NAMES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

NATURAL, ADVERSARIAL, BACKDOOR, BROKEN = "sweep/0", "sweep/1", "backdoor/run", "broken"


def _png(path: Path, seed: int, shape=(6, 18)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.random.default_rng(seed).random(shape), cmap="gray")


def _cls(i: int, ratios: dict[float, dict]) -> dict:
    return {"class_index": i, "class_name": f"class {i}", "canvas_split": "train", "canvas_index": 10 + i,
            "mask_l1": 40.0 + i,
            "by_ratio": [{"pattern_ratio": r, "pixels": int(r * 784), **v} for r, v in ratios.items()]}


def _write_run(root: Path, rel: str, data: dict, images: bool = True) -> Path:
    run = root / rel
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(data, indent=2))
    if images and data.get("classes"):
        for c in data["classes"]:
            _png(run / "patterns" / f"class_{c['class_index']:03d}.png", c["class_index"])
        _png(run / "patterns" / "grid.png", 99, shape=(12, 18))
    return run


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "multirun"
    # natural, two ratios, baselines random + gradcam (gradcam only here)
    _write_run(root, NATURAL, {
        "schema_version": 1,
        "run": {"dataset": "fashion_mnist", "model": "small_cnn", "setting": "natural", "seed": 0},
        "metrics": {"clean_acc": 0.9},
        "search": {"pattern_ratios": [0.01, 0.05], "figure": "patterns/grid.png"},
        "timing": {"train": 50.0, "test": 2.0, "canvas": 1.5, "search": 20.0, "evaluation": 8.0,
                   "baselines": {"random": 1.0, "gradcam": 1.2}, "detection": 0.0, "search_step": 33.0},
        "classes": [_cls(i, {0.01: {"asr": 0.1 * (i + 1), "base_rate": 0.01, "baselines": {"random": 0.02, "gradcam": 0.05}},
                             0.05: {"asr": 0.2 * (i + 1), "base_rate": 0.01, "baselines": {"random": 0.03, "gradcam": 0.07}}})
                    for i in range(3)],
    })
    # adversarial, robust_acc, one ratio, random only
    _write_run(root, ADVERSARIAL, {
        "schema_version": 1,
        "run": {"dataset": "fashion_mnist", "model": "small_cnn", "setting": "adversarial", "seed": 1},
        "metrics": {"clean_acc": 0.8, "robust_acc": 0.55,
                    "robust_attack": {"norm": "linf", "eps": 8 / 255, "step_size": 0.001, "steps": 20}},
        "classes": [_cls(i, {0.05: {"asr": 0.3, "base_rate": 0.02, "baselines": {"random": 0.04}}}) for i in range(3)],
    })
    # backdoor, detection + Neural Cleanse, baselines random + saliency
    _write_run(root, BACKDOOR, {
        "schema_version": 1,
        "run": {"dataset": "synthetic", "model": "small_cnn", "setting": "backdoor", "seed": 0},
        "metrics": {"clean_acc": 0.99, "backdoor_asr": 1.0,
                    "backdoor": {"trigger": "badnets", "target_class": 1, "rate": 0.1}},
        "classes": [_cls(i, {0.05: {"asr": 1.0 if i == 1 else 0.1, "base_rate": 0.0,
                                    "baselines": {"random": 0.01, "saliency": 0.2}}}) for i in range(4)],
        "detection": {"classes": [0, 1, 2, 3], "anomaly_index": [0.5, 9.5, 0.2, 1.0], "flagged": [1],
                      "predicted_target": 1, "true_target": 1, "seconds": None},
        "detection_baselines": {"neural_cleanse": {"classes": [0, 1, 2, 3], "anomaly_index": [3.1, 0.4, 0.1, 0.2],
                                                   "flagged": [0], "predicted_target": 0, "seconds": 22.05}},
    })
    # no classes at all: only in summary / accuracy
    _write_run(root, BROKEN, {"schema_version": 1, "run": {"dataset": "cifar10", "model": "resnet18",
                                                           "setting": "natural"},
                              "metrics": {"clean_acc": 0.5}})
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _by_run(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["run"]: r for r in rows}


@pytest.fixture
def report(runs_root) -> Path:
    out = runs_root / "report"
    assert main([str(runs_root)]) == 0
    return out


def test_tables_in_all_formats_with_every_run(report):
    expected = {"per_class": [NATURAL, ADVERSARIAL, BACKDOOR], "summary": [NATURAL, ADVERSARIAL, BACKDOOR, BROKEN],
                "detection": [BACKDOOR], "accuracy": [NATURAL, ADVERSARIAL, BACKDOOR, BROKEN], "timing": [NATURAL],
                "failed": []}
    for name in TABLE_NAMES:
        for fmt in FORMATS:
            text = (report / f"{name}.{fmt}").read_text()
            for run in expected[name]:
                assert (tex_escape(run) if fmt == "tex" else run) in text, (name, fmt, run)
        rows = _csv(report / f"{name}.csv")
        assert sorted({r["run"] for r in rows}) == sorted(expected[name])
    per_class = _csv(report / "per_class.csv")
    assert len(per_class) == 3 + 3 + 4
    row = next(r for r in per_class if r["run"] == NATURAL and r["class_index"] == "2")
    assert row["class_name"] == "class 2" and row["canvas"] == "train[12]" and float(row["mask_l1"]) == 42.0
    assert float(row["asr@0.01"]) == pytest.approx(0.3) and float(row["random@0.01"]) == 0.02
    assert float(row["base_rate@0.05"]) == 0.01 and float(row["gradcam@0.05"]) == 0.07
    tex = (report / "summary.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\bottomrule" in tex and "mean\\_asr@0.05" in tex
    md = (report / "summary.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 2 + 4 and len({line.count(" | ") for line in table[2:]}) == 1


def test_summary_is_the_union_of_baselines_with_blanks(report):
    rows = _csv(report / "summary.csv")
    cols = list(rows[0])
    for col in ("clean_acc", "robust_acc", "backdoor_asr", "mean_asr@0.01", "mean_asr@0.05", "mean_random@0.01",
                "mean_random@0.05", "mean_gradcam@0.01", "mean_gradcam@0.05", "mean_saliency@0.05"):
        assert col in cols, col
    assert cols.index("mean_asr@0.05") < cols.index("mean_random@0.01") < cols.index("mean_gradcam@0.01")
    by = _by_run(rows)
    assert float(by[NATURAL]["mean_asr@0.01"]) == pytest.approx(0.2)
    assert float(by[NATURAL]["mean_asr@0.05"]) == pytest.approx(0.4)
    assert float(by[NATURAL]["mean_gradcam@0.05"]) == pytest.approx(0.07)
    assert by[NATURAL]["mean_saliency@0.05"] == "" and by[NATURAL]["robust_acc"] == ""
    assert by[NATURAL]["backdoor_asr"] == ""
    assert by[ADVERSARIAL]["mean_asr@0.01"] == "" and by[ADVERSARIAL]["mean_gradcam@0.05"] == ""
    assert float(by[ADVERSARIAL]["robust_acc"]) == 0.55
    assert float(by[BACKDOOR]["backdoor_asr"]) == 1.0
    assert float(by[BACKDOOR]["mean_asr@0.05"]) == pytest.approx((1.0 + 0.3) / 4)
    assert float(by[BACKDOOR]["mean_saliency@0.05"]) == pytest.approx(0.2)
    broken = by[BROKEN]
    assert float(broken["clean_acc"]) == 0.5 and broken["dataset"] == "cifar10"
    assert all(broken[c] == "" for c in cols if c.startswith("mean_")) and broken["classes"] == ""


def test_detection_and_accuracy_tables(report):
    (row,) = _csv(report / "detection.csv")
    assert row["trigger"] == "badnets" and row["true_target"] == "1" and row["predicted_target"] == "1"
    assert float(row["max_anomaly_index"]) == 9.5 and row["max_anomaly_class"] == "1"
    assert float(row["target_anomaly_index"]) == 9.5 and json.loads(row["flagged"]) == [1]
    assert row["nc_predicted_target"] == "0" and row["nc_max_anomaly_class"] == "0"
    assert float(row["nc_target_anomaly_index"]) == 0.4 and float(row["nc_seconds"]) == 22.05
    assert json.loads(row["nc_flagged"]) == [0]
    acc = _by_run(_csv(report / "accuracy.csv"))
    assert float(acc[ADVERSARIAL]["robust_eps"]) == pytest.approx(8 / 255)
    assert acc[NATURAL]["robust_eps"] == "" and float(acc[NATURAL]["clean_acc"]) == 0.9


def test_plots_are_valid_pngs(report):
    plot = report / "asr_vs_ratio.png"
    assert plot.read_bytes()[:8] == PNG_MAGIC
    img = plt.imread(plot)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01
    grids = sorted(p.name for p in report.glob("pattern_grid_*.png"))
    assert grids == ["pattern_grid_backdoor_run.png", "pattern_grid_sweep_0.png", "pattern_grid_sweep_1.png"]
    assert all(not (report / g).is_symlink() and (report / g).read_bytes()[:8] == PNG_MAGIC for g in grids)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []
        self.sections: list[dict] = []
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.links.append(a.get("src") or a.get("href"))
        if tag == "section":
            self.sections.append(a)
        if tag == "select":
            self._select = a["name"]
            self.options[self._select] = []
        if tag == "option" and self._select:
            self.options[self._select].append(a["value"])


def test_gallery_references_existing_relative_images(report):
    index = report / "gallery" / "index.html"
    page = _Page()
    page.feed(index.read_text())
    assert page.links == []  # no external JS / CSS
    assert len(page.srcs) >= 10
    for src in page.srcs:
        assert not src.startswith(("/", "http:", "https:", "file:")), src
        assert (index.parent / src).is_file(), src
    class_imgs = [s for s in page.srcs if "/class_" in s]
    assert len(class_imgs) == 3 + 3 + 4
    assert {s.split("/")[1] for s in class_imgs} == {"sweep_0", "sweep_1", "backdoor_run"}
    assert len(page.sections) == 4
    assert {s["data-setting"] for s in page.sections} == {"natural", "adversarial", "backdoor"}
    assert sorted(page.options["dataset"]) == ["", "cifar10", "fashion_mnist", "synthetic"]
    assert set(page.options) == {"dataset", "model", "setting"}
    text = index.read_text()
    assert "class 2" in text and "0.600" in text  # class name, ASR of class 2 at 0.05
    assert "no class-wise patterns" in text  # the run without classes is still listed


def test_cli_subprocess_out_dir_and_errors(runs_root, tmp_path):
    out = tmp_path / "elsewhere"
    proc = subprocess.run([sys.executable, "-m", "classwise.report", str(runs_root), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 runs" in proc.stdout and (out / "gallery" / "index.html").is_file()
    # twice in a row, with the report inside the folder: same runs, nothing picked up from the report
    assert main([str(runs_root)]) == 0 and main([str(runs_root)]) == 0
    assert len(_csv(runs_root / "report" / "summary.csv")) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert main([str(tmp_path / "missing")]) == 2


def test_runs_without_classes_or_images_and_bad_json(tmp_path):
    root = tmp_path / "odd"
    _write_run(root, "only_metrics", {"run": {"dataset": "d"}, "metrics": {}})
    _write_run(root, "no_images", {"run": {"setting": "natural"},
                                   "classes": [_cls(0, {0.1: {"asr": 0.5}})]}, images=False)
    (root / "bad").mkdir()
    (root / "bad" / "results.json").write_text("{not json")
    runs, written = make_report(root, tmp_path / "out")
    assert sorted(r.run_id for r in runs) == ["no_images", "only_metrics"]
    assert all(p.exists() for p in written)
    summary = _by_run(_csv(tmp_path / "out" / "summary.csv"))
    assert float(summary["no_images"]["mean_asr@0.1"]) == 0.5 and summary["no_images"]["mean_base_rate@0.1"] == ""
    assert "no image" in (tmp_path / "out" / "gallery" / "index.html").read_text()
    assert (tmp_path / "out" / "detection.csv").read_text().startswith("run,")
    # a single run folder given as the root
    runs, _ = make_report(root / "no_images", tmp_path / "out1")
    assert [r.run_id for r in runs] == ["no_images"]


def test_gallery_inline_script_parses(report, tmp_path):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    text = (report / "gallery" / "index.html").read_text()
    scripts = text.split("<script>")[1:]
    assert len(scripts) == 1
    js = tmp_path / "gallery.js"
    js.write_text(scripts[0].split("</script>")[0])
    proc = subprocess.run([node, "--check", str(js)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.querySelectorAll('img'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var sel = document.querySelector('select[name=setting]');
  sel.value = 'backdoor';
  sel.dispatchEvent(new Event('change'));
  var shown = Array.from(document.querySelectorAll('section.run')).filter(function (s) {
    return s.style.display !== 'none'; }).length;
  var out = document.createElement('pre');
  out.id = 'result';
  out.textContent = 'IMAGES ' + ok + '/' + imgs.length + ' SHOWN ' + shown;
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.slow
def test_gallery_renders_in_headless_chromium(report):
    chromium = next((c for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                                 shutil.which("google-chrome")) if c and Path(c).exists()), None)
    if chromium is None:
        pytest.skip("chromium is not installed")
    gallery = report / "gallery"
    check = gallery / "_check.html"
    check.write_text((gallery / "index.html").read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
            "--virtual-time-budget=5000"]
    proc = subprocess.run([*base, "--dump-dom", check.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"IMAGES (\d+)/(\d+) SHOWN (\d+)", proc.stdout)
    assert found, proc.stderr[-2000:]
    loaded, total, shown = map(int, found.groups())
    assert total >= 10 and loaded == total, found.group(0)
    assert shown == 1, found.group(0)  # the setting filter hides the other runs
    shot = report / "gallery.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,900", (gallery / "index.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG_MAGIC and plt.imread(shot).std() > 0.02


def test_seed_aggregation_groups_by_the_resolved_config_minus_the_seed(tmp_path):
    """Two trainers written under one folder name are two configurations; two seeds of one are one."""
    from classwise.reporting.aggregate import aggregate_tables, config_groups
    from classwise.reporting.runs import find_runs

    def run(folder, seed, accelerator):
        config = {"seed": seed, "trainer": {"accelerator": accelerator}, "search": {"seed": seed},
                  "setting": {"poisoner": {"target_class": 1 + 3 * seed}}, "paths": {"output_dir": folder}}
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "results.json").write_text(json.dumps({
            "run": {"dataset": "synthetic", "model": "small_cnn", "setting": "natural", "seed": seed,
                    "config": config}, "metrics": {"clean_acc": 0.5 + seed / 10}}))

    for i, (seed, accelerator) in enumerate([(0, "cpu"), (1, "cpu"), (0, "gpu"), (1, "gpu")]):
        run(f"{i}_seed={seed}", seed, accelerator)
    runs = find_runs(tmp_path)
    groups = config_groups(runs)
    assert sorted(len(g) for g in groups.values()) == [2, 2]
    assert any("trainer.accelerator=gpu" in label for label in groups)
    table = next(t for t in aggregate_tables(runs) if any("clean_acc" in c for c in t.columns))
    assert sorted(row["n"] for row in table.rows) == [2, 2]
