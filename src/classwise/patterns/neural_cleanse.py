"""Neural Cleanse (Wang et al. 2019) as a baseline detector: a reverse-engineered trigger per class."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from classwise.patterns.chunking import RunOptions, class_chunks, images_per_pass
from classwise.patterns.detection import THRESHOLD, MADRule, detect
from classwise.patterns.search import ImageSet, OtherClassBatches, as_float, frozen, stream_seed
from classwise.progress import tqdm

INITS = ("random", "zero")


@dataclass(frozen=True)
class NeuralCleanseConfig:
    """Defaults: the reference implementation's (bolunwang/backdoor, visualizer.py and its GTSRB example).

    One "epoch" is `epoch_size` images per class (the reference's NB_SAMPLE = 1000, in batches of
    32); the cost schedule and early stop are checked once per epoch, on the epoch's mean ASR and L1.
    """

    epochs: int = 1000  # the reference's STEPS: at most this many epochs (early stop usually ends sooner)
    epoch_size: int = 1000  # images per class per epoch (the reference's NB_SAMPLE)
    batch_size: int = 32
    lr: float = 0.1  # Adam, betas (0.5, 0.9) as in the reference
    init_cost: float = 1e-3
    asr_threshold: float = 0.99
    patience: int = 5  # epochs before the cost moves
    cost_multiplier: float = 2.0  # up by this, down by this ** 1.5 (the reference's cost_multiplier_down)
    reset_cost_to_zero: bool = True  # start at cost 0; init_cost once the attack has worked `patience` epochs
    init: str = "random"  # mask and pattern start uniform in [0, 1] ("zero": both at 0.5)
    early_stop: bool = True
    early_stop_threshold: float = 0.99  # the best L1 must fall below this share of the best so far to count
    early_stop_patience: int = 10  # epochs without that, after the cost has moved both up and down
    seed: int = 0

    def __post_init__(self) -> None:
        from classwise.errors import ConfigError

        if self.init not in INITS:
            raise ConfigError(f"detector.init={self.init!r} is unknown; accepted: {', '.join(INITS)}")
        for key in ("epochs", "epoch_size", "batch_size", "lr", "patience", "cost_multiplier", "early_stop_patience"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"detector.{key}={getattr(self, key)} must be positive")


def _tanh_space(x: torch.Tensor) -> torch.Tensor:
    """The logits a with (tanh(a) + 1) / 2 = x, x in [0, 1] kept off the ends (the reference's epsilon)."""
    return torch.atanh((x - 0.5) * (2 - 1e-7))


def neural_cleanse(
    model: nn.Module,
    targets: list[int],
    pool: ImageSet,
    cfg: NeuralCleanseConfig = NeuralCleanseConfig(),
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Neural Cleanse's detection block over `targets` (one process): `neural_cleanse_masks` then `nc_detection`."""
    return nc_detection(neural_cleanse_masks(model, targets, pool, cfg, run), cfg)


PER_CLASS_KEYS = ("classes", "l1", "reached_threshold", "epochs_run")  # of `neural_cleanse_masks`' result


def nc_detection(per_class: dict[str, Any], cfg: NeuralCleanseConfig, threshold: float = THRESHOLD) -> dict[str, Any]:
    """The anomaly-index block from per-class results (those of several ranks joined, in any order)."""
    order = sorted(range(len(per_class["classes"])), key=lambda i: per_class["classes"][i])
    pick = {k: [per_class[k][i] for i in order] for k in PER_CLASS_KEYS}
    block = detect(pick["l1"], MADRule("neural_cleanse_mask_l1", "small", threshold), class_indices=pick["classes"])
    block["reached_threshold"] = pick["reached_threshold"]
    block["epochs_run"] = pick["epochs_run"]
    block["settings"] = {"epochs": cfg.epochs, "epoch_size": cfg.epoch_size, "cost_multiplier": cfg.cost_multiplier,
                         "init": cfg.init, "early_stop": cfg.early_stop}
    block["seconds"] = per_class["seconds"]
    return block


def neural_cleanse_masks(
    model: nn.Module,
    targets: list[int],
    pool: ImageSet,
    cfg: NeuralCleanseConfig = NeuralCleanseConfig(),
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Per class a mask m = (tanh(a)+1)/2 [1,H,W] and pattern p = (tanh(b)+1)/2 [C,H,W] minimising
    CE(f((1-m)x + m p), t) + cost_t * |m|_1, all classes batched, each with the reference's schedule:
    cost 0 until the attack works for `patience` epochs, then `init_cost`; up by `cost_multiplier`
    after `patience` epochs at ASR >= threshold, down by `cost_multiplier**1.5` after `patience`
    below; a class stops once its cost has moved both ways and its best L1 has not improved for
    `early_stop_patience` epochs. The detection uses the L1 of each class's smallest mask that reached
    the threshold (of its last mask if none did), small side.
    A step passes the active classes in chunks of at most `run.max_forward` images (None: from memory);
    the gradients accumulate before one Adam step, so chunks do not change the result.
    Every class has its own init, batch stream and schedule, so a class's result does not depend on
    which classes share the call: ranks can each take a share and concatenate (`nc_detection`).
    Returns per class (in `targets` order): `classes`, `l1` (used for detection), `reached_threshold`,
    `epochs_run`, and the call's `seconds`.
    """
    pool_images, pool_labels = pool
    run = run or RunOptions()
    device = next(model.parameters()).device
    k = len(targets)
    _, c, h, w = pool_images.shape
    tgt = torch.tensor(targets, device=device)
    if cfg.init == "random":  # each class from its own generator: its start does not depend on its batch-mates
        gens = [torch.Generator().manual_seed(stream_seed(cfg.seed, 3_500_000 + t)) for t in targets]
        a0 = torch.stack([_tanh_space(torch.rand(1, h, w, generator=g)) for g in gens])
        b0 = torch.stack([_tanh_space(torch.rand(c, h, w, generator=g)) for g in gens])
    else:
        a0, b0 = torch.zeros(k, 1, h, w), torch.zeros(k, c, h, w)
    a = a0.to(device).requires_grad_(True)  # mask logits
    b = b0.to(device).requires_grad_(True)  # pattern logits
    opt = torch.optim.Adam([a, b], lr=cfg.lr, betas=(0.5, 0.9))
    cost = torch.full((k,), 0.0 if cfg.reset_cost_to_zero else cfg.init_cost)
    zeros = torch.zeros(k, dtype=torch.long)
    up, down, set_count, stale = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
    moved_up, moved_down = torch.zeros(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)
    active = torch.ones(k, dtype=torch.bool)
    best_l1 = torch.full((k,), math.inf)
    stop_best = torch.full((k,), math.inf)  # the reference's early_stop_reg_best
    epochs_run = torch.zeros(k, dtype=torch.long)
    batches = OtherClassBatches(pool_labels, targets, cfg.batch_size, cfg.seed, [3_000_000 + t for t in targets])
    pool_x = pool_images.to(device)
    per_pass = images_per_pass(model, (c, h, w), run.max_forward, backward=True)
    steps_per_epoch = math.ceil(cfg.epoch_size / cfg.batch_size)
    start = time.perf_counter()
    bar = tqdm(total=cfg.epochs, desc=f"neural cleanse ({k} classes)", disable=not run.progress, leave=False)
    with frozen(model):
        for _epoch in range(cfg.epochs):
            live = active.nonzero().flatten()
            if len(live) == 0:
                break
            hits = torch.zeros(k, device=device)
            l1_sum = torch.zeros(k, device=device)
            cost_d = cost.to(device)
            for _ in range(steps_per_epoch):
                idx = batches.next().to(device)  # [K, B]: every class draws, so a class's stream never depends on others
                opt.zero_grad(set_to_none=True)
                for sl in class_chunks(len(live), cfg.batch_size, per_pass):
                    rows = live[sl].to(device)
                    x = as_float(pool_x[idx[rows]])  # [k, B, C, H, W]
                    m = (torch.tanh(a[rows]) + 1) / 2
                    p = (torch.tanh(b[rows]) + 1) / 2
                    xs = ((1 - m.unsqueeze(1)) * x + (m * p).unsqueeze(1)).flatten(0, 1)
                    logits = model(xs)
                    t = tgt[rows]
                    ce = F.cross_entropy(logits, t.repeat_interleave(cfg.batch_size), reduction="none").view(len(t), -1).mean(1)
                    l1_c = m.flatten(1).sum(1)
                    (ce + cost_d[rows] * l1_c).sum().backward()
                    with torch.no_grad():
                        hits[rows] += (logits.argmax(1).view(len(t), -1) == t.unsqueeze(1)).float().mean(1)
                        l1_sum[rows] += l1_c
                opt.step()
            bar.update(1)
            # The reference's end-of-epoch bookkeeping, per class, for the classes still running.
            asr = (hits / steps_per_epoch).cpu()
            l1_mean = (l1_sum / steps_per_epoch).cpu()
            ok = asr >= cfg.asr_threshold
            run = active.clone()
            epochs_run += run.long()
            best_l1 = torch.where(run & ok & (l1_mean < best_l1), l1_mean, best_l1)
            if cfg.early_stop:
                found = run & torch.isfinite(best_l1)
                stale = torch.where(found & (best_l1 >= cfg.early_stop_threshold * stop_best), stale + 1,
                                    torch.where(found, zeros, stale))
                stop_best = torch.where(run, torch.minimum(stop_best, best_l1), stop_best)
                active &= ~(moved_up & moved_down & (stale >= cfg.early_stop_patience))
            at_zero = run & (cost == 0)
            set_count = torch.where(at_zero & ok, set_count + 1, zeros)
            switch_on = set_count >= cfg.patience
            cost = torch.where(switch_on, torch.full_like(cost, cfg.init_cost), cost)
            for counter in (up, down):
                counter[switch_on] = 0
            moved_up &= ~switch_on
            moved_down &= ~switch_on
            up = torch.where(run & ok, up + 1, torch.where(run, zeros, up))
            down = torch.where(run & ~ok, down + 1, torch.where(run, zeros, down))
            raise_cost, lower_cost = up >= cfg.patience, (down >= cfg.patience) & (up < cfg.patience)
            cost = torch.where(raise_cost, cost * cfg.cost_multiplier, cost)
            cost = torch.where(lower_cost, cost / cfg.cost_multiplier**1.5, cost)
            up[raise_cost] = 0
            down[lower_cost] = 0
            moved_up |= raise_cost
            moved_down |= lower_cost
        final_l1 = ((torch.tanh(a) + 1) / 2).flatten(1).sum(1).detach().cpu()
    bar.close()
    l1_used = torch.where(torch.isinf(best_l1), final_l1, best_l1)
    return {"classes": list(targets), "l1": l1_used.tolist(), "reached_threshold": (~torch.isinf(best_l1)).tolist(),
            "epochs_run": epochs_run.tolist(), "seconds": round(time.perf_counter() - start, 2)}
