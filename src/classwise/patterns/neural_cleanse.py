"""Neural Cleanse (Wang et al. 2019) as a baseline detector: a reverse-engineered trigger per class."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from classwise.patterns.chunking import class_chunks, images_per_pass
from classwise.patterns.detection import detect
from classwise.patterns.search import OtherClassBatches, as_float, frozen
from classwise.progress import tqdm


@dataclass(frozen=True)
class NeuralCleanseConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    asr_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 1.5
    check_every: int = 10
    seed: int = 0


def neural_cleanse(
    model: nn.Module,
    targets: list[int],
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    cfg: NeuralCleanseConfig = NeuralCleanseConfig(),
    progress: bool = True,
    max_forward: int | None = None,
) -> dict[str, Any]:
    """Per class a mask m = (tanh(a)+1)/2 [1,H,W] and pattern p = (tanh(b)+1)/2 [C,H,W] minimising
    CE(f((1-m)x + m p), t) + cost_t * |m|_1, all classes batched; each class's cost follows Neural
    Cleanse's schedule (up by `cost_multiplier` after `patience` checks at ASR >= threshold, down by
    `cost_multiplier**1.5` after `patience` checks below). The detection uses the L1 of each class's
    smallest mask that reached the threshold (of its last mask if none did), small side.
    A step passes the classes in chunks of at most `max_forward` images (null: from memory); the
    gradients accumulate before one Adam step, so chunks do not change the result.
    """
    device = next(model.parameters()).device
    k = len(targets)
    _, c, h, w = pool_images.shape
    tgt = torch.tensor(targets, device=device)
    a = torch.zeros(k, 1, h, w, device=device, requires_grad=True)  # mask logits (start at m = 0.5)
    b = torch.zeros(k, c, h, w, device=device, requires_grad=True)  # pattern logits
    opt = torch.optim.Adam([a, b], lr=cfg.lr, betas=(0.5, 0.9))
    cost = torch.full((k,), cfg.init_cost, device=device)
    up = torch.zeros(k, dtype=torch.long)
    down = torch.zeros(k, dtype=torch.long)
    best_l1 = torch.full((k,), math.inf)
    batches = OtherClassBatches(pool_labels, targets, cfg.batch_size, cfg.seed, 3_000_000)
    pool = pool_images.to(device)
    chunks = list(class_chunks(k, cfg.batch_size, images_per_pass(model, (c, h, w), max_forward, backward=True)))
    hits = torch.zeros(k, device=device)
    l1 = torch.zeros(k, device=device)
    seen = 0
    start = time.perf_counter()
    with frozen(model):
        for step in tqdm(range(cfg.steps), desc=f"neural cleanse ({k} classes)", disable=not progress, leave=False):
            idx = batches.next().to(device)  # [K, B]
            opt.zero_grad(set_to_none=True)
            for sl in chunks:
                x = as_float(pool[idx[sl]])  # [k, B, C, H, W]
                m = (torch.tanh(a[sl]) + 1) / 2
                p = (torch.tanh(b[sl]) + 1) / 2
                xs = ((1 - m.unsqueeze(1)) * x + (m * p).unsqueeze(1)).flatten(0, 1)
                logits = model(xs)
                t = tgt[sl]
                ce = F.cross_entropy(logits, t.repeat_interleave(cfg.batch_size), reduction="none").view(len(t), -1).mean(1)
                l1_c = m.flatten(1).sum(1)
                (ce + cost[sl] * l1_c).sum().backward()
                with torch.no_grad():
                    hits[sl] += (logits.argmax(1).view(len(t), -1) == t.unsqueeze(1)).float().mean(1)
                    l1[sl] = l1_c
            opt.step()
            with torch.no_grad():
                seen += 1
                if (step + 1) % cfg.check_every == 0:
                    asr = (hits / seen).cpu()
                    ok = asr >= cfg.asr_threshold
                    l1_now = l1.cpu()
                    best_l1 = torch.where(ok & (l1_now < best_l1), l1_now, best_l1)
                    up = torch.where(ok, up + 1, torch.zeros_like(up))
                    down = torch.where(ok, torch.zeros_like(down), down + 1)
                    raise_cost = (up >= cfg.patience).to(device)
                    lower_cost = (down >= cfg.patience).to(device)
                    cost = torch.where(raise_cost, cost * cfg.cost_multiplier, cost)
                    cost = torch.where(lower_cost, cost / cfg.cost_multiplier**1.5, cost)
                    up[raise_cost.cpu()] = 0
                    down[lower_cost.cpu()] = 0
                    hits.zero_()
                    seen = 0
        final_l1 = ((torch.tanh(a) + 1) / 2).flatten(1).sum(1).detach().cpu()
    l1_used = torch.where(torch.isinf(best_l1), final_l1, best_l1)
    block = detect(l1_used.tolist(), "neural_cleanse_mask_l1", "small", class_indices=targets)
    block["reached_threshold"] = (~torch.isinf(best_l1)).tolist()
    block["seconds"] = round(time.perf_counter() - start, 2)
    return block
