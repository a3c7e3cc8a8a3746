"""The class-wise pattern search of Zhao et al. 2021: one mask per target class, all classes batched."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from classwise.errors import ConfigError
from classwise.patterns.chunking import frozen, images_per_pass
from classwise.progress import tqdm

UPDATES = ("sign", "adam")
PRECISIONS = ("32", "bf16")


@dataclass
class SearchConfig:
    """How masks are optimised. The defaults are the authors' values (the `paper` preset)."""

    update: str = "sign"  # "sign": m <- clip(m - step_size * sign(grad)); "adam": Adam(lr=step_size)
    step_size: float = 0.02
    alpha: float = 0.2  # weight of the cross-entropy; (1 - alpha) weighs the mask size
    batch_size: int = 4  # pool images per class per step
    epochs: float = 5.0  # passes over the pool (ignored when `steps` is set)
    steps: int | None = None
    mask_init: float = 0.5
    seed: int = 0
    max_forward: int | None = None  # images in one pass; null: from the device's free memory (CPU: 2048)
    precision: str = "32"  # "32" | "bf16": the model's forward under bf16 autocast (masks stay fp32)
    channels_last: bool = False  # NHWC memory format for the model and its inputs (faster convs on GPUs)
    cuda_graph: bool = False  # capture each chunk's signed-gradient step as one CUDA graph (GPU only)

    def __post_init__(self) -> None:
        if self.update not in UPDATES:
            raise ConfigError(f"search.update={self.update!r} is unknown; accepted: {', '.join(UPDATES)}")
        for key in ("step_size", "batch_size", "epochs"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"search.{key}={getattr(self, key)} must be positive")
        if self.max_forward is not None and self.max_forward <= 0:
            raise ConfigError(f"search.max_forward={self.max_forward} must be a positive integer or null (from memory)")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"search.alpha={self.alpha} must be in (0, 1]")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"search.steps={self.steps} must be a positive integer or null")
        if not 0 <= self.mask_init <= 1:
            raise ConfigError(f"search.mask_init={self.mask_init} must be in [0, 1]")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError(f"search.precision={self.precision!r} is unknown; accepted: {', '.join(PRECISIONS)}")
        object.__setattr__(self, "precision", str(self.precision))
        if self.cuda_graph and self.update != "sign":
            raise ConfigError(f"search.cuda_graph=true needs search.update=sign, not {self.update!r}")


@dataclass
class PatternResult:
    """Continuous masks found for each searched (target class, canvas) pair."""

    target_classes: torch.Tensor  # [K] int64
    canvases: torch.Tensor  # [K, C, H, W] in [0, 1]
    masks: torch.Tensor  # [K, 1, H, W] in [0, 1]
    final_ce: torch.Tensor  # [K] cross-entropy of the last step, for the record
    steps: int
    # [K, 1, H, W] tie-break score of each pixel: the mask without the clip to [0, 1] (see `search_patterns`)
    scores: torch.Tensor | None = None

    @property
    def mask_l1(self) -> torch.Tensor:
        return self.masks.flatten(1).sum(1)


def stream_seed(seed: int, key: int) -> int:
    """A generator seed from (run seed, stream key): a class's randomness never depends on its batch-mates."""
    return (seed * 1_000_003 + key * 7_919 + 12_345) % (2**62)


def pattern_pixel_count(ratio: float, height: int, width: int) -> int:
    """k = round(ratio * H * W), at least one pixel."""
    return max(1, round(ratio * height * width))


def validate_ratios(ratios: Sequence[float]) -> list[float]:
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise ConfigError("search.pattern_ratios=[] is empty; accepted: a list of ratios in (0, 1]")
    for r in ratios:
        if not 0 < r <= 1:
            raise ConfigError(f"search.pattern_ratios has {r}; accepted: ratios in (0, 1]")
    return ratios


def top_pixels(masks: torch.Tensor, ratio: float, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean pixel masks [K, 1, H, W] of the k largest mask values.

    The signed update leaves masks on a grid (many pixels end at exactly 0 or 1), so ties are common;
    they are broken by `scores` [K, 1, H, W] (higher first; the search's unclipped mask), and only
    then by lower pixel index, so the result is deterministic. Without scores (a run saved before
    they were kept) the index alone breaks ties: the rule that chose the pixels such a run evaluated.
    """
    k_count, _, h, w = masks.shape
    k = pattern_pixel_count(ratio, h, w)
    flat = masks.reshape(k_count, -1)
    order = torch.arange(h * w, device=masks.device).expand(k_count, -1)
    if scores is not None:  # lexicographic (mask, score, -index) by two stable sorts, secondary key first
        order = torch.sort(scores.reshape(k_count, -1).to(masks.device), dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(flat.gather(1, order), dim=1, descending=True, stable=True).indices)[:, :k]
    chosen = torch.zeros(k_count, h * w, dtype=torch.bool, device=masks.device)
    chosen.scatter_(1, order, True)
    return chosen.view(k_count, 1, h, w)


def tie_counts(masks: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per mask [K]: (non-zero mask pixels among the pattern's k, pattern pixels chosen by the tie-break).

    The second counts the chosen pixels whose mask value equals the k-th largest while more pixels
    than slots share that value: those the mask alone does not decide.
    """
    k_count, _, h, w = masks.shape
    k = pattern_pixel_count(ratio, h, w)
    flat = masks.reshape(k_count, -1)
    kth = torch.topk(flat, k, dim=1).values[:, -1:]  # [K, 1]
    above = (flat > kth).sum(1)
    at = (flat == kth).sum(1)
    decided_by_tie = torch.where(above + at > k, k - above, torch.zeros_like(above))
    nonzero = torch.clamp((flat > 0).sum(1), max=k)
    return nonzero, decided_by_tie


def paste(images: torch.Tensor, canvas: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Hard paste: the pattern's pixels (all channels) replace the image's. images [N, C, H, W]."""
    return torch.where(pixels, canvas, images)


class ImageSet(NamedTuple):
    """Labelled images: a search pool or an eval split (a plain (images, labels) pair unpacks the same)."""

    images: torch.Tensor  # [N, C, H, W], float in [0, 1] or uint8 (converted per batch)
    labels: torch.Tensor  # [N] int64


def as_float(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats from images stored as uint8 (converted per batch, on the device); floats pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class OtherClassBatches:
    """Pool indices per step, `batch_size` per target: for each target, images of the other classes only.

    Each target walks successive random permutations of its other-class images (every image once
    before any twice, as an epoch of a shuffled loader does), drawn from its own generator seeded
    by (seed, key): a class's batches never depend on its batch-mates. The search, the baselines and
    Neural Cleanse all draw their batches here; each passes its own keys so their streams differ.
    """

    def __init__(self, pool_labels: torch.Tensor, targets: Sequence[int], batch_size: int, seed: int,
                 keys: Sequence[int]):
        self.others = [(pool_labels != t).nonzero().flatten() for t in targets]
        for t, o in zip(targets, self.others, strict=True):
            if len(o) == 0:
                raise ConfigError(f"the search pool has no image outside class {t}; accepted: a pool with several classes")
        self.generators = [torch.Generator().manual_seed(stream_seed(seed, key)) for key in keys]
        self.left = [o[:0] for o in self.others]  # what is left of each target's current permutation
        self.batch_size = batch_size

    def take(self, steps: int) -> torch.Tensor:
        """The next `steps` batches of every target: [K, steps, B]."""
        count = steps * self.batch_size
        out = []
        for i, (o, g) in enumerate(zip(self.others, self.generators, strict=True)):
            parts, have = [self.left[i]], len(self.left[i])
            while have < count:
                parts.append(o[torch.randperm(len(o), generator=g)])
                have += len(o)
            flat = torch.cat(parts)
            self.left[i] = flat[count:]
            out.append(flat[:count].view(steps, self.batch_size))
        return torch.stack(out)

    def next(self) -> torch.Tensor:
        """The next batch of every target: [K, B]."""
        return self.take(1)[:, 0]


def mask_pixels(mask: torch.Tensor, ratio: float, score: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [1, H, W]: the pattern's pixels of one continuous mask [1, H, W] at `ratio` (ties: `score`)."""
    return top_pixels(mask.unsqueeze(0), ratio, None if score is None else score.unsqueeze(0))[0]


def steps_for_pool(pool_labels: torch.Tensor, cfg: SearchConfig) -> int:
    """Number of steps: `epochs` passes over the largest other-class pool (a function of the pool alone)."""
    if cfg.steps is not None:
        return int(cfg.steps)
    counts = torch.bincount(pool_labels)
    present = counts.nonzero().flatten()
    n_ref = max(int(len(pool_labels) - counts[c]) for c in present.tolist())
    return max(1, math.ceil(cfg.epochs * n_ref / cfg.batch_size))


@dataclass(frozen=True)
class SearchOptions:
    """What one `search_patterns` call adds to the (shared) SearchConfig: each mask's stream key, which
    seeds its batch order with `cfg.seed` (None: its target class), and the progress bar."""

    stream_keys: Sequence[int] | None = None
    progress: bool = True
    description: str = "pattern search"


def search_patterns(
    model: nn.Module,
    canvases: torch.Tensor,
    target_classes: Sequence[int] | torch.Tensor,
    pool: ImageSet,
    cfg: SearchConfig | None = None,
    options: SearchOptions = SearchOptions(),
) -> PatternResult:
    """Optimise one mask per (canvas, target class), all of them in one batched loop.

    canvases [K, C, H, W] in [0, 1]; target_classes [K]; pool: images [N, C, H, W], labels [N].
    Class k's mask sees only pool images whose label differs from its target. The loss per mask is
    `alpha * CE(f(m*c + (1-m)*x), t) + (1 - alpha) * sum(m) / (H*W/2)`; masks do not interact, so
    the result for a class is the one a search of that class alone would give. `options.stream_keys`
    (default: the target classes) seed each mask's batch order, with `cfg.seed`.

    Each pixel also gets a tie-break score: the sum of all its updates without the clip to [0, 1]
    (mask_init plus the updates). Among pixels that end at the same mask value (the sign rule leaves
    many at exactly 0 or 1) it says how hard the loss kept pushing them, summed over every batch of
    the search: a pixel at 1 that was pushed up 200 steps past the clip beats one that reached 1 on
    the last step. The last gradient alone would be one batch of `batch_size` images, far noisier.
    """
    cfg = cfg if cfg is not None else SearchConfig()
    targets = torch.as_tensor(target_classes, dtype=torch.long).cpu()
    k_total, channels, h, w = canvases.shape
    if len(targets) != k_total:
        raise ValueError(f"{k_total} canvases but {len(targets)} target classes")
    pool_images, pool_labels = pool
    keys = targets.tolist() if options.stream_keys is None else list(options.stream_keys)
    device = next(model.parameters()).device
    steps = steps_for_pool(pool_labels, cfg)
    b = cfg.batch_size

    # Every mask's batch order, drawn up front: [K, steps, B] into the pool.
    streams_t = OtherClassBatches(pool_labels, targets.tolist(), b, cfg.seed, keys).take(steps)

    if cfg.cuda_graph and device.type != "cuda":
        raise ConfigError(f"search.cuda_graph=true needs a CUDA device; the model is on {device.type}")
    pool_x = _pool_on(device, pool_images)
    streams_t = streams_t.to(pool_x.device)  # moved once: no host-to-device copy of indices per step
    chunk = max(1, images_per_pass(model, (channels, h, w), cfg.max_forward, backward=True) // b)
    masks_out = torch.empty(k_total, 1, h, w)
    scores_out = torch.empty(k_total, 1, h, w)
    ce_out = torch.empty(k_total)
    bar = tqdm(total=steps * math.ceil(k_total / chunk), desc=options.description, disable=not options.progress, leave=False)
    with frozen(model), search_precision(model, device, cfg):
        for start in range(0, k_total, chunk):
            sl = slice(start, min(start + chunk, k_total))
            kc = sl.stop - sl.start
            canv = canvases[sl].to(device).unsqueeze(1)  # [Kc, 1, C, H, W]
            tgt = targets[sl].to(device).repeat_interleave(b)  # [Kc * B]
            mask = torch.full((kc, 1, h, w), cfg.mask_init, device=device, requires_grad=True)
            adam = torch.optim.Adam([mask], lr=cfg.step_size) if cfg.update == "adam" else None

            def batch(step: int, sl=sl) -> torch.Tensor:  # [Kc, B, C, H, W] float on the device
                return as_float(pool_x[streams_t[sl, step]].to(device, non_blocking=True))

            def loss_and_grad(x: torch.Tensor, mask=mask, canv=canv, tgt=tgt, kc=kc):
                m = mask.unsqueeze(1)  # [Kc, 1, 1, H, W]
                patterned = (m * canv + (1 - m) * x).view(kc * b, channels, h, w)
                if cfg.channels_last:
                    patterned = patterned.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    logits = model(patterned)
                ce = F.cross_entropy(logits.float(), tgt, reduction="none").view(kc, b).mean(1)
                size = mask.sum(dim=(1, 2, 3)) / (h * w / 2)
                loss = cfg.alpha * ce + (1 - cfg.alpha) * size  # [Kc]
                return ce, torch.autograd.grad(loss.sum(), mask)[0]

            if cfg.cuda_graph:
                ce, score = _graphed_sign_search(mask, batch, loss_and_grad, steps, cfg, bar)
            else:
                score = mask.detach().clone()  # the unclipped mask: mask_init plus every update
                ce = torch.zeros(kc, device=device)
                for step in range(steps):
                    ce, grad = loss_and_grad(batch(step))
                    with torch.no_grad():
                        before = mask.detach().clone()
                        if adam is None:
                            mask -= cfg.step_size * grad.sign()
                        else:
                            mask.grad = grad
                            adam.step()
                        score += mask - before
                        mask.clamp_(0, 1)
                    bar.update(1)
            masks_out[sl] = mask.detach().cpu()
            scores_out[sl] = score.cpu()
            ce_out[sl] = ce.detach().cpu()
    bar.close()
    return PatternResult(targets, canvases.detach().cpu(), masks_out, ce_out, steps, scores=scores_out)


def _pool_on(device: torch.device, pool_images: torch.Tensor) -> torch.Tensor:
    """The pool on the device (as stored: uint8 stays uint8) where it fits, else on the host.

    CUDA: up to a quarter of the free memory; other devices: up to 1 GiB.
    """
    size = pool_images.numel() * pool_images.element_size()
    if device.type == "cuda":
        fits = size < torch.cuda.mem_get_info(device)[0] // 4
    else:
        fits = size < 2**30
    return pool_images.to(device) if fits else pool_images


@contextmanager
def search_precision(model: nn.Module, device: torch.device, cfg: SearchConfig) -> Iterator[None]:
    """channels_last for the duration (restored after); bf16 autocast itself is applied per forward."""
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"search.precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; accepted: 32")
    if not cfg.channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _graphed_sign_search(mask, batch, loss_and_grad, steps: int, cfg: SearchConfig, bar) -> tuple[torch.Tensor, torch.Tensor]:
    """The signed-gradient steps of one chunk, the step captured once as a CUDA graph and replayed;
    returns the last step's cross-entropy [Kc] and the unclipped mask (`search_patterns`' tie-break score).

    A ResNet-18 step on 40 CIFAR images is a few hundred small kernels: launch-bound on a large GPU,
    which one graph replay per step avoids. Each step copies its batch into the graph's static input.
    """
    static_x = batch(0).clone()
    init = mask.detach().clone()
    score = init.clone()  # starts as the mask does: mask_init everywhere
    static_ce = torch.zeros(mask.shape[0], device=mask.device)

    def step() -> None:
        ce, grad = loss_and_grad(static_x)
        with torch.no_grad():
            update = cfg.step_size * grad.sign()
            score.sub_(update)
            mask.sub_(update).clamp_(0, 1)
            static_ce.copy_(ce)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuDNN choice), then undone
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():
        mask.copy_(init)
        score.copy_(init)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for i in range(steps):
        static_x.copy_(batch(i))
        graph.replay()
        bar.update(1)
    return static_ce, score
