"""Attack success rates of pasted patterns, batched over patterns and images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from classwise import intervals
from classwise.patterns.chunking import images_per_pass
from classwise.patterns.search import ImageSet, as_float, frozen
from classwise.progress import tqdm


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels [N] of images [N, C, H, W] (float, or uint8 converted per batch; model in eval mode)."""
    device = next(model.parameters()).device
    batch_size = images_per_pass(model, tuple(images.shape[1:]), batch_size, backward=False, default=1024)
    with frozen(model), torch.no_grad():
        return torch.cat([model(as_float(images[i : i + batch_size].to(device))).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


EVAL_ORDER_KEY = 5_000_000  # stream key of the eval split's random order (one order for every pattern)


def eval_order(n: int, order_seed: int) -> torch.Tensor:
    """The seeded random order in which sequential evaluation visits the n eval images (patterns,
    baselines and base rates alike)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(order_seed))


@dataclass
class Rates:
    """Counted rates of P patterns: hits [P] out of n [P] images, with their Wilson intervals at `z`.

    `z` is 95%'s 1.96 for a rate counted on every image, and the Bonferroni-corrected z of
    `intervals.sequential_z` for one that a sequential evaluation stopped, so its interval keeps 95%.
    """

    hits: torch.Tensor  # [P] int64
    n: torch.Tensor  # [P] int64
    z: float = intervals.Z95

    @property
    def rate(self) -> torch.Tensor:
        return self.hits.float() / self.n.clamp(min=1).float()

    def half_width(self) -> torch.Tensor:
        """[P] half-widths of the Wilson intervals."""
        return torch.tensor([intervals.half_width(int(h), int(n), self.z)
                             for h, n in zip(self.hits.flatten(), self.n.flatten(), strict=True)])

    def view(self, *shape: int) -> Rates:
        return Rates(self.hits.view(*shape), self.n.view(*shape), self.z)

    def fields(self, index: int | tuple[int, ...], name: str) -> dict[str, float | int | list[float]]:
        """`{name: rate, name_ci: [lo, hi], name_n: n}` of one entry, as results.json spells it."""
        return intervals.rate_fields(int(self.hits[index]), int(self.n[index]), name, self.z)


def _looks(n_images: int, half_width: float | None) -> tuple[list[int], float]:
    """Where a pass over n_images may stop, and the z of its intervals (every image, 95%, without `half_width`)."""
    if half_width is None:
        return [n_images], intervals.Z95
    return intervals.look_schedule(n_images), intervals.sequential_z(n_images)


def stopped_early(bar, half_width: float, n_seen: int) -> None:
    """Say on the bar why it ends before 100%: every interval reached its half-width at a look."""
    bar.set_postfix_str(f"stopped: interval \u00b1{half_width:g} reached after {n_seen:,} images", refresh=False)


@dataclass(frozen=True)
class EvalOptions:
    """How `attack_successes` and `held_out_base_rates` run.

    `max_forward`: images per forward pass (None: 256 on CPU, from free memory on a GPU).
    `additive`: the canvases are perturbations added at the chosen pixels (clipped to [0, 1])
    instead of pixels pasted (patterns only). `half_width`: sequential evaluation, stopping a rate
    once its interval is at most +-half_width wide (None: every image), in the random order seeded
    by `order_seed`. `progress`, `description`: the progress bar (patterns only).
    """

    max_forward: int | None = None
    additive: bool = False
    half_width: float | None = None
    order_seed: int = 0
    progress: bool = False
    description: str = "evaluating patterns"


@torch.no_grad()
def attack_successes(
    model: nn.Module,
    canvases: torch.Tensor,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    eval_set: ImageSet,
    options: EvalOptions = EvalOptions(),
) -> Rates:
    """Hits and counts [P] of P patterns: images *not* of the target class predicted as the target.

    canvases [P, C, H, W], pixels [P, 1, H, W] bool, targets [P]; eval_set: images [N, C, H, W]
    (uint8 converted per batch), labels [N]. With `options.additive`, `canvases` are perturbations
    added at the chosen pixels (clipped to [0, 1]) instead of pixels pasted. Each forward pass holds
    up to `options.max_forward` pasted images (several patterns at once); larger passes are slower
    on CPU, where activations outgrow the caches.

    `options.half_width`: sequential evaluation. The images are visited in one random order (seeded
    by `options.order_seed`, the same for every pattern, so a pattern's result does not depend on the
    others in the call); at each look of `intervals.look_schedule` (128, 256, 512, ... images), a
    pattern leaves the batch once the interval of its rate (Wilson, Bonferroni over the looks) is at
    most +-half_width wide. The looks are fixed in images, so n and ASR are the same for every
    `max_forward` and device. The whole set is the cap; None evaluates every image.
    """
    images, labels = eval_set
    half_width, additive = options.half_width, options.additive
    device = next(model.parameters()).device
    max_forward = images_per_pass(model, tuple(images.shape[1:]), options.max_forward, backward=False, default=256)
    p_total = len(targets)
    hits = torch.zeros(p_total, dtype=torch.long)
    seen = torch.zeros(p_total, dtype=torch.long)
    n_img = min(len(images), max(1, max_forward))
    group = max(1, max_forward // max(n_img, 1))
    if half_width is not None:
        order = eval_order(len(images), options.order_seed)
        images, labels = images[order], labels[order]
    active = torch.arange(p_total)
    looks, z = _looks(len(images), half_width)
    canvases_d, pixels_d, targets_d = canvases.to(device), pixels.to(device), targets.to(device)
    bar = tqdm(total=len(images), desc=options.description, unit="img", disable=not options.progress, leave=False)
    with frozen(model), torch.no_grad(), bar:
        start = 0
        for end in looks:
            if len(active) == 0:
                break
            for i in range(start, end, n_img):
                x = as_float(images[i : min(i + n_img, end)].to(device))  # [n, C, H, W]
                y = labels[i : min(i + n_img, end)].to(device)
                for g0 in range(0, len(active), group):
                    ps = active[g0 : g0 + group].to(device)  # [g] pattern indices
                    t = targets_d[ps].unsqueeze(1)
                    others = y.unsqueeze(0) != t  # [g, n]
                    # An image of every pattern's target class counts for none of them: leave it out of
                    # the forward pass (on CPU a group is one pattern, so its class's ~1/K of the images).
                    keep = others.any(0)
                    if not bool(keep.any()):
                        continue
                    xg, others = (x, others) if bool(keep.all()) else (x[keep], others[:, keep])
                    if additive:
                        pert = torch.where(pixels_d[ps], canvases_d[ps], torch.zeros_like(canvases_d[ps]))
                        pasted = (xg.unsqueeze(0) + pert.unsqueeze(1)).clamp(0, 1)
                    else:
                        pasted = torch.where(pixels_d[ps].unsqueeze(1), canvases_d[ps].unsqueeze(1), xg.unsqueeze(0))
                    g = pasted.shape[0]
                    pred = model(pasted.flatten(0, 1)).argmax(1).view(g, -1)  # [g, n]
                    hits[ps.cpu()] += ((pred == t) & others).sum(1).cpu()
                    seen[ps.cpu()] += others.sum(1).cpu()
                bar.update(len(y))
            start = end
            if half_width is not None:
                active = active[Rates(hits[active], seen[active], z).half_width() > half_width]
                if len(active) == 0:
                    if end < len(images):
                        stopped_early(bar, half_width, end)
                    break
    return Rates(hits, seen, z)


def attack_success_rates(model: nn.Module, canvases: torch.Tensor, pixels: torch.Tensor, targets: torch.Tensor,
                         eval_set: ImageSet, options: EvalOptions = EvalOptions()) -> torch.Tensor:
    """ASR [P] of P patterns (see `attack_successes` for the arguments)."""
    return attack_successes(model, canvases, pixels, targets, eval_set, options).rate


def base_rates(predictions: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> Rates:
    """Non-target images [P] that the model already assigns to each target without a paste."""
    others = labels.unsqueeze(0) != targets.unsqueeze(1)  # [P, N]
    hits = (others & (predictions.unsqueeze(0) == targets.unsqueeze(1))).sum(1)
    return Rates(hits, others.sum(1))


@torch.no_grad()
def held_out_base_rates(model: nn.Module, eval_set: ImageSet, targets: torch.Tensor,
                        options: EvalOptions = EvalOptions()) -> Rates:
    """Base rates [P] (no paste) on the eval split, sequential like `attack_successes`.

    With `options.half_width`, images are predicted in the same seeded order (`options.order_seed`)
    as the patterns are evaluated in, `options.max_forward` a pass, and stop at the first look (the
    same looks) where every target's interval is at most +-half_width wide (a base rate near 0 is
    settled after a few hundred images); None predicts every image.
    """
    images, labels = eval_set
    half_width = options.half_width
    if half_width is None:
        return base_rates(predict(model, images, options.max_forward), labels, targets)
    device = next(model.parameters()).device
    batch_size = images_per_pass(model, tuple(images.shape[1:]), options.max_forward, backward=False, default=256)
    order = eval_order(len(images), options.order_seed)
    looks, z = _looks(len(images), half_width)
    hits = torch.zeros(len(targets), dtype=torch.long)
    seen = torch.zeros(len(targets), dtype=torch.long)
    with frozen(model):
        start = 0
        for end in looks:
            for i in range(start, end, batch_size):
                idx = order[i : min(i + batch_size, end)]
                pred = model(as_float(images[idx].to(device))).argmax(1).cpu()
                step = base_rates(pred, labels[idx], targets)
                hits, seen = hits + step.hits, seen + step.n
            start = end
            if bool((Rates(hits, seen, z).half_width() <= half_width).all()):
                break
    return Rates(hits, seen, z)


def random_pixels(shape: tuple[int, int], ratios: list[float], generator: torch.Generator) -> list[torch.Tensor]:
    """Nested random pixel sets, one [1, H, W] bool per ratio, from one permutation."""
    from classwise.patterns.search import pattern_pixel_count

    h, w = shape
    order = torch.randperm(h * w, generator=generator)
    out = []
    for r in ratios:
        chosen = torch.zeros(h * w, dtype=torch.bool)
        chosen[order[: pattern_pixel_count(r, h, w)]] = True
        out.append(chosen.view(1, h, w))
    return out
