"""`make bench`: what the search and its evaluation cost against the model's own speed, on this machine.

Four ratios, each measured in one run on the same model and inputs (so other jobs on the machine
shift both sides alike):
(a) search:  batched search images/s over the model's plain forward+backward images/s at the same
    batch (input gradients only, as the search): about 1 means no bookkeeping cost;
(b) eval:    held-out evaluation images/s (pasting + forward) over the model's inference images/s
    at the same forward size: about 1 means evaluation costs what inference costs;
(c) loop:    all classes in one batched search against a Python loop of per-class searches, equal
    steps (the speedup of batching);
(d) authors: the same against the authors' own loop (their generateMap.py): one class at a time, a
    `DataLoader(shuffle=True, batch_size=4)` over the other classes' pool, mask updated with the
    signed gradient after each batch, equal gradient evaluations; the model is put in eval mode and
    nothing else, so the backward also computes weight gradients, as in a plain port.
`--ranks` adds the wall time of `classwise-search` on 1 and 2 CPU processes (gloo).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from classwise.models import build_model
from classwise.patterns.evaluate import attack_successes
from classwise.patterns.search import (
    ImageSet,
    SearchConfig,
    SearchOptions,
    search_patterns,
    top_pixels,
)
from classwise.reporting.results import environment


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_grad_rate(model, x, y, steps: int) -> float:
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


@torch.no_grad()
def inference_rate(model, images: torch.Tensor, batch: int, repeats: int) -> float:
    """Images/s of the model's forward pass alone at `batch` images per pass."""
    model.eval()
    x = images[:batch]
    model(x)  # warm-up
    return repeats * len(x) / _timed(lambda: [model(x) for _ in range(repeats)])


def authors_loop(model, canvases, targets, pool, labels, cfg: SearchConfig, steps: int) -> None:
    """The reference implementation's shape: per class, a shuffled DataLoader of batch 4 over the other
    classes' pool, one signed-gradient mask step per batch, `steps` batches (epochs as needed)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    h, w = canvases.shape[-2:]
    for canvas, t in zip(canvases, targets, strict=True):
        others = labels != t
        loader = DataLoader(TensorDataset(pool[others], labels[others]), batch_size=cfg.batch_size, shuffle=True)
        mask = torch.full((1, h, w), cfg.mask_init, requires_grad=True)
        done = 0
        while done < steps:
            for x, _ in loader:
                patterned = mask * canvas + (1 - mask) * x
                target = torch.full((len(x),), t, dtype=torch.long)
                loss = cfg.alpha * F.cross_entropy(model(patterned), target) + (1 - cfg.alpha) * mask.sum() / (h * w / 2)
                loss.backward()
                with torch.no_grad():
                    mask -= cfg.step_size * mask.grad.sign()
                    mask.clamp_(0, 1)
                mask.grad.zero_()
                model.zero_grad()
                done += 1
                if done == steps:
                    break


def bench_model(name: str, channels: int, size: int, classes: int, steps: int, pool_n: int, eval_n: int,
                rounds: int = 5) -> dict:
    """The four ratios of one model. Each round times every contender back to back on a slice of the work,
    and a ratio is the median over rounds of its per-round ratio: a burst of other jobs on a shared
    machine then moves both sides of a ratio, not one."""
    torch.manual_seed(0)
    model = build_model(name, channels, classes, size, [0.5] * channels, [0.25] * channels)
    pool = torch.rand(pool_n, channels, size, size)
    labels = torch.arange(pool_n) % classes
    canvases = torch.rand(classes, channels, size, size)
    targets = list(range(classes))
    per_round = max(1, steps // rounds)
    cfg = SearchConfig(steps=per_round)  # the paper's batch of 4 images per class per step
    batch = classes * cfg.batch_size
    pix = top_pixels(torch.rand(classes, 1, size, size), 0.05)
    images, image_labels = pool[:eval_n], labels[:eval_n]
    quiet = SearchOptions(progress=False)
    search_patterns(model, canvases[:1], [0], ImageSet(pool, labels), SearchConfig(steps=2), quiet)  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in ("batched", "loop", "authors", "plain", "eval", "infer")}
    n_infer = max(1, classes * eval_n // 256)  # 256-image inference passes, about the evaluation's images
    for _ in range(rounds):
        seconds["batched"].append(_timed(lambda: search_patterns(model, canvases, targets, ImageSet(pool, labels), cfg, quiet)))
        seconds["loop"].append(_timed(lambda: [search_patterns(model, canvases[k : k + 1], [k], ImageSet(pool, labels), cfg,
                                                               quiet) for k in targets]))
        seconds["authors"].append(_timed(lambda: authors_loop(model, canvases, targets, pool, labels, cfg, per_round)))
        seconds["plain"].append(per_round * batch / plain_grad_rate(model, pool[:batch], labels[:batch], per_round))
        seconds["eval"].append(_timed(lambda: attack_successes(model, canvases, pix, torch.tensor(targets),
                                                               ImageSet(images, image_labels))))
        seconds["infer"].append(n_infer * 256 / inference_rate(model, pool, 256, n_infer))

    def ratio(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(seconds[num], seconds[den], strict=True))

    total = {k: sum(v) for k, v in seconds.items()}
    return {
        "model": f"{name} {size}x{size}", "classes": classes, "steps": per_round * rounds,
        "fwd+bwd img/s": per_round * rounds * batch / total["plain"],
        "search img/s": per_round * rounds * batch / total["batched"],
        "(a) search/fwd+bwd": ratio("plain", "batched"),
        "inference img/s": rounds * n_infer * 256 / total["infer"],
        "eval img/s": rounds * classes * eval_n / total["eval"],
        "(b) eval/inference": 1 / ratio("eval", "infer") * (classes * eval_n) / (n_infer * 256),
        "batched s": total["batched"], "per-class loop s": total["loop"], "(c) loop/batched": ratio("loop", "batched"),
        "authors' loop s": total["authors"], "(d) authors/batched": ratio("authors", "batched"),
    }


def bench_ranks(steps: int) -> list[dict]:
    """Wall time of `classwise-search` on 1 and 2 CPU processes (gloo) for a 10-class checkpoint."""
    import os
    import subprocess
    import tempfile

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


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--ranks", action="store_true", help="also time classwise-search on 1 and 2 CPU processes")
    parser.add_argument("--json", metavar="PATH", help="also write the tables, command and machine to PATH "
                        "(what experiments/results_pages.py turns into the speed page)")
    args = parser.parse_args(argv)
    q = 4 if args.quick else 1
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    report: dict = {"command": " ".join(["python -m classwise.bench", *(argv if argv is not None else sys.argv[1:])]),
                    "environment": environment(), "models": [
                        bench_model("small_cnn", 1, 28, 10, 100 // q, 2000, 1000 // q),
                        bench_model("resnet18", 3, 32, 10, 12 // q, 400, 100 // q)]}
    print_table(report["models"])
    if args.ranks:
        print()
        print("classwise-search, synthetic 10 classes, small_cnn 16x16, CPU processes (gloo):")
        report["ranks"] = bench_ranks(400 // q)
        print_table(report["ranks"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
