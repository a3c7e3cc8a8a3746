"""`make bench`: throughput of the pattern search and of its held-out evaluation, on this machine.

(a) search images/s against the same model's plain forward+backward images/s at the same batch
    (their ratio is the search's efficiency: about 1 is the limit);
(b) all classes in one batched search against a Python loop of per-class searches, equal steps;
(c) evaluation (pasting + forward) images/s.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from classwise.models import build_model
from classwise.patterns.evaluate import attack_success_rates
from classwise.patterns.search import SearchConfig, search_patterns, top_pixels


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_train_rate(model, x, y, steps: int) -> float:
    """Images/s of forward + backward (input gradients only, as the search does) at batch len(x)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def run():
        for _ in range(steps):
            xi = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xi), y)
            torch.autograd.grad(loss, xi)

    run() if steps > 1 else None  # warm-up
    return steps * len(x) / _timed(run)


def bench_model(name: str, channels: int, size: int, classes: int, per_class: int, steps: int, pool_n: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, channels, classes, size, [0.5] * channels, [0.25] * channels)
    pool = torch.rand(pool_n, channels, size, size)
    labels = torch.arange(pool_n) % classes
    canvases = torch.rand(classes, channels, size, size)
    targets = list(range(classes))
    cfg = SearchConfig(batch_size=per_class, steps=steps)
    search_patterns(model, canvases[:1], [0], pool, labels, SearchConfig(batch_size=per_class, steps=2), progress=False)
    t_batched = _timed(lambda: search_patterns(model, canvases, targets, pool, labels, cfg, progress=False))
    t_loop = _timed(lambda: [search_patterns(model, canvases[k : k + 1], [k], pool, labels, cfg, progress=False)
                             for k in targets])
    batch = classes * per_class
    plain = plain_train_rate(model, pool[:batch], labels[:batch], steps)
    search_rate = steps * batch / t_batched
    masks = torch.rand(classes, 1, size, size)
    pix = top_pixels(masks, 0.05)
    t_eval = _timed(lambda: attack_success_rates(model, canvases, pix, torch.tensor(targets), pool, labels))
    return {
        "model": f"{name} {size}x{size}", "classes": classes, "batch/step": batch, "steps": steps,
        "plain img/s": plain, "search img/s": search_rate, "efficiency": search_rate / plain,
        "batched s": t_batched, "loop s": t_loop, "speedup": t_loop / t_batched,
        "eval img/s": classes * pool_n / t_eval,
    }


def bench_ranks(steps: int) -> list[dict]:
    """Wall time of `classwise-search` on 1 and 2 CPU processes (gloo) for a 10-class checkpoint."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CLASSWISE_ROOT=tmp, WANDB_MODE="disabled")
        base = [sys.executable, "-m"]
        subprocess.run(base + ["classwise.train", "debug=fast", "dataset.num_classes=10", "search.enabled=false",
                               f"hydra.run.dir={tmp}/train"], env=env, check=True, capture_output=True)
        for devices in (1, 2):
            run = Path(tmp) / f"search{devices}"
            start = time.perf_counter()
            subprocess.run(base + ["classwise.search", "debug=fast", f"checkpoint={tmp}/train", f"search.steps={steps}",
                                   "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}",
                                   f"hydra.run.dir={run}"], env=env, check=True, capture_output=True)
            wall = time.perf_counter() - start
            seconds = json.loads((run / "results.json").read_text())["search"]["seconds"]
            rows.append({"ranks": devices, "search s (slowest rank)": seconds, "command wall s": wall})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = parser.parse_args(argv)
    q = 4 if args.quick else 1
    rows = [
        bench_model("small_cnn", 1, 28, 10, 4, 200 // q, 2000),
        bench_model("resnet18", 3, 32, 10, 4, 20 // q, 400),
    ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    print()
    print("classwise-search, synthetic 10 classes, small_cnn 16x16, CPU processes (gloo):")
    ranks = bench_ranks(400 // q)
    print("| " + " | ".join(ranks[0]) + " |")
    print("|" + "---|" * len(ranks[0]))
    for r in ranks:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
