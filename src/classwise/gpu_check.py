"""`make gpu-check`: the GPU path in one short run, on synthetic data with random-init models (no downloads).

Prints (and with --out writes as JSON):
(a) search images/s against the same model's own forward+backward images/s at the search's batch,
    CIFAR-shaped (ResNet-18, 3x32x32, 10 classes) and ImageNet-shaped (ResNet-50, 3x224x224);
(b) bf16 autocast against fp32: search images/s and the ASR of the masks each finds;
(c) seconds per search step at 1,000 classes with the chunking the device chose (images per pass);
(d) the device the PatternSearch callback's search ran on after a Lightning fit on the accelerator.
On a GPU it is sized to finish in under 5 minutes; without one it runs small sizes (and says so).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from classwise.bench import plain_grad_rate
from classwise.models import build_model
from classwise.patterns.chunking import images_per_pass
from classwise.patterns.evaluate import attack_success_rates
from classwise.patterns.search import (
    ImageSet,
    SearchConfig,
    SearchOptions,
    search_patterns,
    top_pixels,
)

# name -> (model, image size, classes for (a)/(b), pool images, steps, classes for (c)); GPU and CPU sizes.
GPU_SIZES = {"cifar": ("resnet18", 32, 10, 2000, 50, 1000), "imagenet": ("resnet50", 224, 10, 400, 10, 1000)}
CPU_SIZES = {"cifar": ("resnet18", 16, 2, 8, 2, 4), "imagenet": ("resnet50", 32, 2, 8, 1, 2)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _data(size: int, classes: int, pool_n: int):
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (pool_n, 3, size, size), dtype=torch.uint8, generator=g)  # stored as a dataset would
    labels = torch.arange(pool_n) % classes
    canvases = torch.rand(classes, 3, size, size, generator=g)
    return pool, labels, canvases


def search_speed(name: str, sizes: tuple, device: torch.device) -> list[dict]:
    """(a) and (b): fp32 and bf16 search images/s, the model's own fwd+bwd images/s, ASR of each's masks."""
    arch, size, classes, pool_n, steps, _ = sizes
    torch.manual_seed(0)
    model = build_model(arch, 3, classes, size, [0.5] * 3, [0.25] * 3).to(device)
    pool, labels, canvases = _data(size, classes, pool_n)
    targets = list(range(classes))
    batch = classes * 4
    plain = plain_grad_rate(model, (pool[:batch].float() / 255).to(device), labels[:batch].to(device), max(2, steps))
    rows = []
    for precision in ("32", "bf16"):
        cfg = SearchConfig(batch_size=4, steps=steps, precision=precision)
        search_patterns(model, canvases, targets, ImageSet(pool, labels), SearchConfig(batch_size=4, steps=1, precision=precision),
                        SearchOptions(progress=False))  # warm-up: cuDNN choice, allocator
        result: dict = {}

        def run(cfg=cfg, result=result) -> None:
            result["r"] = search_patterns(model, canvases, targets, ImageSet(pool, labels), cfg, SearchOptions(progress=False))

        seconds = _timed(run, device)
        pix = top_pixels(result["r"].masks, 0.05, result["r"].scores)
        asr = attack_success_rates(model, canvases, pix, torch.tensor(targets), ImageSet(pool, labels))
        rate = steps * batch / seconds
        rows.append({"data": name, "model": f"{arch} {size}x{size}", "precision": precision, "classes": classes,
                     "steps": steps, "plain img/s": round(plain, 1), "search img/s": round(rate, 1),
                     "efficiency": round(rate / plain, 3), "mean ASR@5%": round(float(asr.mean()), 4)})
    return rows


def many_classes(name: str, sizes: tuple, device: torch.device) -> dict:
    """(c): seconds per step with `classes_c` classes, chunked by what the device's memory allows."""
    arch, size, _, _, _, classes_c = sizes
    torch.manual_seed(0)
    model = build_model(arch, 3, classes_c, size, [0.5] * 3, [0.25] * 3).to(device)
    pool, labels, canvases = _data(size, classes_c, 4 * classes_c)
    per_pass = images_per_pass(model, (3, size, size), None, backward=True)
    cfg = SearchConfig(batch_size=4, steps=1)
    seconds = _timed(lambda: search_patterns(model, canvases, list(range(classes_c)), ImageSet(pool, labels), cfg,
                                             SearchOptions(progress=False)), device)
    return {"data": name, "model": f"{arch} {size}x{size}", "classes": classes_c, "images per pass": per_pass,
            "chunks": -(-classes_c // max(1, per_pass // 4)), "s per step": round(seconds, 3)}


def callback_device(device: torch.device) -> dict:
    """(d): fit a tiny model with the PatternSearch callback on the accelerator; where did its search run?"""
    import tempfile

    import lightning as L

    from classwise.builders import build_classifier, build_datamodule
    from classwise.callbacks import pattern_search
    from classwise.lit import ClassifierModule

    dataset = {"name": "synthetic", "image_size": 16, "channels": 1, "num_classes": 3, "num_train": 96,
               "num_test": 96, "seed": 0, "mean": [0.5], "std": [0.25]}
    seen = {}
    real = pattern_search.run_pattern_search

    def recording(model, *args, **kwargs):
        seen["search"] = str(next(model.parameters()).device)
        return real(model, *args, **kwargs)

    pattern_search.run_pattern_search = recording
    try:
        with tempfile.TemporaryDirectory() as tmp:
            module = ClassifierModule(build_classifier({"name": "small_cnn"}, dataset),
                                      optimizer=functools.partial(torch.optim.SGD, lr=0.01), num_classes=3)
            callback = pattern_search.PatternSearch({"steps": 1, "batch_size": 4, "baselines": {"methods": []},
                                                     "canvas": {"strategy": "index", "max_candidates": 8},
                                                     "evaluation": {"max_per_class": 8}}, tmp)
            trainer = L.Trainer(accelerator=device.type, devices=1, max_epochs=1, limit_train_batches=2,
                                limit_val_batches=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
            trainer.fit(module, datamodule=build_datamodule(dataset, {"batch_size": 32}, seed=0))
            root = str(trainer.strategy.root_device)
    finally:
        pattern_search.run_pattern_search = real
    return {"trained on": root, "callback's search ran on": seen.get("search"), "same": seen.get("search") == root}


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU sizes even where a GPU is present")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    sizes = GPU_SIZES if on_gpu else CPU_SIZES
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"gpu-check on {name} (torch {torch.__version__})" +
          ("" if on_gpu else ": no GPU, so SMALL CPU SIZES; these figures say nothing about GPU speed"))
    start = time.perf_counter()
    speed = [row for key in sizes for row in search_speed(key, sizes[key], device)]
    print("\n(a, b) search vs the model's own fwd+bwd, fp32 vs bf16 autocast:\n" + _table(speed))
    chunks = [many_classes(key, sizes[key], device) for key in sizes]
    print("\n(c) one search step at many classes (1,000 on a GPU), chunked by the device's memory:\n" + _table(chunks))
    placement = callback_device(device)
    print("\n(d) the PatternSearch callback after fit:\n" + _table([placement]))
    report = {"device": name, "gpu": on_gpu, "torch": torch.__version__, "speed": speed, "many_classes": chunks,
              "callback": placement, "seconds": round(time.perf_counter() - start, 1),
              "date": time.strftime("%Y-%m-%d")}
    print(f"\ntotal {report['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
