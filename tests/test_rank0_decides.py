"""Two ranks that see different run folders (no shared storage) take rank 0's branch: train, skip, resume.

Two gloo processes started as torchrun starts them, each with its own run folder: only rank 0's ever
holds results and checkpoints. Both ranks must follow what rank 0's folder says and finish. The same
runs also check that PGD-20 runs on rank 0 alone and that the test accuracy counts each image once.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
from pathlib import Path

import pytest

from tests.conftest import on_two_ranks

# 101 test images (odd: a padding sampler would count one twice); 10 classes and one training batch,
# so the accuracy lies strictly between 0 and 1 and a counted-twice image would move it.
OVERRIDES = ["debug=fast", "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2",
             "trainer.max_epochs=1", "trainer.limit_train_batches=1", "dataset.num_classes=10", "dataset.num_train=300",
             "dataset.num_test=101", "search.enabled=false", "robust_eval=true", "collective_timeout_min=0.5"]


def _worker(rank: int, port: int, tmp: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="rank0-decides")
    import lightning as L
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from classwise.attacks.pgd import AdversarialTraining
    from classwise.config import conf_dir
    from classwise.train import train

    seen: dict = {"fit": [], "pgd": 0}
    fit, evaluate = L.Trainer.fit, AdversarialTraining.evaluate

    def recorded_fit(self, *args, ckpt_path=None, **kwargs):
        seen["fit"].append(ckpt_path)
        return fit(self, *args, ckpt_path=ckpt_path, **kwargs)

    def counted_evaluate(self, *args, **kwargs):
        seen["pgd"] += 1
        return evaluate(self, *args, **kwargs)

    L.Trainer.fit, AdversarialTraining.evaluate = recorded_fit, counted_evaluate
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=OVERRIDES)
    with open_dict(cfg):
        cfg.paths.output_dir = f"{tmp}/rank{rank}"  # a folder of its own: what a node without shared storage sees
    rounds = []
    for step in ("fresh", "finished", "checkpoint only"):
        if step == "checkpoint only" and rank == 0:
            Path(tmp, "rank0", "results.json").unlink()
        seen["fit"], seen["pgd"], out = [], 0, io.StringIO()
        with contextlib.redirect_stdout(out):
            result = train(cfg)
        rounds.append({"fit": seen["fit"], "pgd": seen["pgd"], "stdout": out.getvalue(),
                       "metrics": result.get("metrics")})
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(rounds))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_without_shared_storage_take_rank0s_branch_and_count_each_test_image_once(tmp_path):
    """Fresh run: an unreadable last.ckpt in rank 0's folder is moved aside, both train from scratch;
    rerun: rank 0's finished folder makes both skip; without its results.json, both resume from its
    last.ckpt. PGD-20 runs once (rank 0) and clean accuracy equals the one-process accuracy."""
    import torch

    (tmp_path / "rank0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "rank0" / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated by a full disk")
    assert on_two_ranks(_worker, _free_port(), str(tmp_path)) == [0, 0]  # both finish: no rank waits on the other
    zero, one = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2))
    last = str(tmp_path / "rank0" / "checkpoints" / "last.ckpt")

    fresh = [zero[0], one[0]]
    assert "last.ckpt is unreadable" in zero[0]["stdout"] and "starts from scratch" in zero[0]["stdout"]
    assert [r["fit"] for r in fresh] == [[None], [None]]
    assert [r["pgd"] for r in fresh] == [1, 0]  # PGD-20 on rank 0 alone
    assert torch.load(last, weights_only=True)["state_dict"]  # a complete new checkpoint, no temp file left
    assert not list((tmp_path / "rank0" / "checkpoints").glob(".*.tmp"))
    assert not (tmp_path / "rank1" / "results.json").exists()  # rank 1's folder never holds a finished run

    finished = [zero[1], one[1]]
    assert [r["fit"] for r in finished] == [[], []] and all("skipped:" in r["stdout"] for r in finished)
    assert one[1]["metrics"] == zero[1]["metrics"]  # rank 1 reports rank 0's finished results

    resumed = [zero[2], one[2]]
    assert [r["fit"] for r in resumed] == [[last], [last]]
    results = json.loads((tmp_path / "rank0" / "results.json").read_text())
    assert results["run"]["resumed_from"] == last

    # The one-process accuracy of the trained model on the whole test set, each image once.
    from classwise.builders import build_classifier, build_datamodule

    config = results["run"]["config"]
    model = build_classifier(config["model"], config["dataset"])
    state = torch.load(last, weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    dm = build_datamodule(config["dataset"], config["data"], config["seed"])
    dm.prepare_data()
    dm.setup()
    images, labels = dm.source.test.batch(torch.arange(len(dm.source.test)))
    with torch.no_grad():
        expected = float((model.eval()(images).argmax(1) == labels).float().mean())
    assert len(labels) == 101 and 0 < expected < 1
    for metrics in (zero[0]["metrics"], results["metrics"]):
        assert metrics["clean_acc"] == pytest.approx(expected, abs=1e-6)
