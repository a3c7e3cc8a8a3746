"""Distributed search on CPU with gloo: classes sharded over ranks, gathered on rank 0, same result."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import read_json, run_cli

DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true")
# The universal patch and Neural Cleanse on tiny budgets, so the sharded detectors are compared too.
NC = ("detector=[universal_patch,neural_cleanse_fast]", "detector.neural_cleanse.epochs=2",
      "detector.neural_cleanse.epoch_size=32", "detector.universal_patch.steps=5", "detector.universal_patch.eval_images=64")


@pytest.fixture(scope="module")
def ten_class_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run_cli("train", "debug=fast", "dataset.num_classes=10", "search.enabled=false", root=root, run_dir=root / "train")
    return root


def _classes(run_dir):
    res = read_json(run_dir / "results.json")
    return res, [c["class_index"] for c in res["classes"]]


@pytest.mark.parametrize("devices", [2, 3])
def test_sharded_search_equals_one_process(ten_class_run, devices):
    root = ten_class_run
    single = root / "single"
    if not (single / "results.json").exists():
        run_cli("search", "debug=fast", *NC, f"checkpoint={root / 'train'}", root=root, run_dir=single)
    multi = root / f"ddp{devices}"
    run_cli("search", "debug=fast", *NC, *DDP, f"trainer.devices={devices}", f"checkpoint={root / 'train'}", root=root,
            run_dir=multi)
    one, one_classes = _classes(single)
    many, many_classes = _classes(multi)
    assert many["search"]["world_size"] == devices and one["search"]["world_size"] == 1
    assert many_classes == one_classes == list(range(10))
    for a, b in zip(one["classes"], many["classes"], strict=True):
        assert a["canvas_index"] == b["canvas_index"]
        assert a["by_ratio"][0]["asr"] == pytest.approx(b["by_ratio"][0]["asr"], abs=1e-6)
    nc1, nc2 = (r["detectors"]["neural_cleanse"] for r in (one, many))
    assert nc1["classes"] == nc2["classes"] == list(range(10))
    assert nc1["values"] == pytest.approx(nc2["values"], abs=1e-4) and nc1["flagged"] == nc2["flagged"]
    up1, up2 = (r["detectors"]["universal_patch"] for r in (one, many))
    assert up1["classes"] == up2["classes"] == list(range(10)) and up1["asr"] == up2["asr"]
    assert (up1["verdict"], up1["score"]) == (up2["verdict"], pytest.approx(up2["score"], abs=1e-6))
    m1 = load_file(str(single / "patterns" / "masks.safetensors"))
    m2 = load_file(str(multi / "patterns" / "masks.safetensors"))
    assert all(torch.allclose(m1[k], m2[k], atol=1e-5) for k in m1)


def test_train_then_search_on_two_processes(tmp_path):
    run_cli("train", "debug=fast", *DDP, "trainer.devices=2", "dataset.num_classes=5", root=tmp_path,
            run_dir=tmp_path / "run")
    res, classes = _classes(tmp_path / "run")
    assert classes == [0, 1, 2, 3, 4]
    assert res["search"]["world_size"] == 2 and res["metrics"]["clean_acc"] > 0.5


def test_ddp_inside_multirun_is_refused(tmp_path):
    proc = run_cli("search", "--multirun", "debug=fast", *DDP, "trainer.devices=2", "checkpoint=/x.ckpt", "seed=0,1",
                   root=tmp_path, check=False)
    assert proc.returncode != 0 and "ddp_spawn" in proc.stderr


@pytest.mark.slow
def test_twenty_two_process_runs_do_not_abort_at_exit(ten_class_run):
    root = ten_class_run
    for i in range(20):
        proc = run_cli("search", "debug=fast", *DDP, "trainer.devices=2", f"checkpoint={root / 'train'}",
                       "search.steps=2", root=root, run_dir=root / f"loop{i}", check=False)
        assert proc.returncode == 0, f"run {i} exited {proc.returncode}: {proc.stderr[-2000:]}"
