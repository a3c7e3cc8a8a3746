"""A rank that fails makes every rank fail within seconds, with its one-line message (2 gloo ranks on CPU)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch

from tests.conftest import on_two_ranks

DATASET = {"name": "synthetic", "image_size": 8, "channels": 1, "num_classes": 4, "num_train": 64, "num_test": 96,
           "seed": 0, "mean": [0.5], "std": [0.25]}
TIMEOUT = timedelta(seconds=60)  # what an unanswered collective would wait: the test must end long before


class FailsOnRank1(torch.nn.Module):
    def __init__(self, model, rank):
        super().__init__()
        self.model, self.rank = model, rank

    def forward(self, x):
        if self.rank == 1:
            raise RuntimeError("planted failure on rank 1")
        return self.model(x)


def _worker(rank: int, tmp: str) -> None:
    import torch.distributed as dist

    from classwise.builders import build_classifier, build_datamodule
    from classwise.callbacks.pattern_search import PatternSearch
    from classwise.pipeline import search_step

    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2, timeout=TIMEOUT)
    from classwise.ranks import Ranks

    ranks = Ranks(2, TIMEOUT)
    # Results of this rank: a float canvas, a mask and a score, as the search step gathers them.
    g = torch.Generator().manual_seed(rank)
    mine = ([{"class_index": rank, "canvas": torch.rand(3, 8, 8, generator=g), "mask": torch.rand(1, 8, 8, generator=g),
              "score": float(rank)}], 1.5 * rank)
    before = [None, None] if rank == 0 else None
    dist.gather_object(mine, before, dst=0)  # the gather the search step used before `Ranks`
    after = ranks.gather(mine)
    same = rank != 0 or (len(after) == 2 and all(
        a[1] == b[1] and all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]
                             for x, y in zip(a[0], b[0], strict=True) for k in x)
        for a, b in zip(before, after, strict=True)))
    decided = ranks.from_rank0(f"decided on rank {rank}")
    outcomes = []
    save_outputs = search_step.save_outputs
    # Both cases in the same two processes: a RankFailed leaves the group usable, as it leaves every rank
    # at the same point; two fresh process pairs would double the test's time for nothing it checks.
    for failing in (0, 1):
        start = time.monotonic()
        try:
            model = build_classifier({"name": "small_cnn"}, DATASET)
            if failing == 1:
                model = FailsOnRank1(model, rank)
            else:  # rank 0 alone writes the outputs: make that step raise
                def planted(*args, **kwargs):
                    raise RuntimeError("planted failure on rank 0")
                search_step.save_outputs = planted
            trainer = SimpleNamespace(sanity_checking=False, world_size=2, global_rank=rank, logger=None,
                                      datamodule=build_datamodule(DATASET, {"batch_size": 32}, seed=0),
                                      strategy=SimpleNamespace(root_device=torch.device("cpu"), _timeout=TIMEOUT))
            module = SimpleNamespace(model=model, to=lambda device, **_: None)
            PatternSearch({"steps": 2, "baselines": {"methods": []}}, f"{tmp}/run{failing}").on_fit_end(trainer, module)
            outcome = {"error": None}
        except Exception as exc:  # noqa: BLE001 - what each rank raised is the test's subject
            outcome = {"error": type(exc).__name__, "message": str(exc)}
        finally:
            search_step.save_outputs = save_outputs
        outcomes.append({**outcome, "failing": failing, "seconds": time.monotonic() - start})
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({"outcomes": outcomes, "gathered_as_before": same,
                                                         "decided": decided}))
    dist.destroy_process_group()


def test_a_failing_rank_fails_every_rank_promptly_with_its_message(tmp_path):
    """A raising step on rank 0, then on rank 1. Also: the gather over the ranks' CPU group gives what
    `gather_object` gave, and rank 0's decision reaches every rank."""
    on_two_ranks(_worker, str(tmp_path), timeout=180)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for report in reports:
        assert report["gathered_as_before"] and report["decided"] == "decided on rank 0"
        assert [o["failing"] for o in report["outcomes"]] == [0, 1]
        for outcome in report["outcomes"]:
            failing = outcome["failing"]
            assert outcome["error"] == "RankFailed", reports
            assert outcome["message"] == f"rank {failing} failed in pattern search: RuntimeError: planted failure on rank {failing}"
            assert outcome["seconds"] < 30  # not the collective timeout
