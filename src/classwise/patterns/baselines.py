"""Baselines at the pattern's pixel budget: attribution-map pixels (Grad-CAM, saliency) and targeted UAPs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from classwise.errors import ConfigError
from classwise.patterns.chunking import RunOptions, class_chunks, images_per_pass
from classwise.patterns.search import (
    ImageSet,
    OtherClassBatches,
    as_float,
    frozen,
    top_pixels,
)
from classwise.progress import tqdm

BASELINES = ("random", "gradcam", "saliency", "uap", "universal_patch")


def check_baselines(names) -> list[str]:
    names = list(names or [])
    for n in names:
        if n not in BASELINES:
            raise ConfigError(f"search.baselines.methods has {n!r}; accepted: {', '.join(BASELINES)}")
    return names


def last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("search.baselines.methods=[gradcam] needs a model with a Conv2d layer")
    return convs[-1]


def attribution_map(model: nn.Module, canvases: torch.Tensor, targets: torch.Tensor, method: str,
                    max_forward: int | None = None) -> torch.Tensor:
    """[K, H, W] attribution of each canvas for its target class, by Captum, `max_forward` canvases a pass.

    `gradcam`: Grad-CAM at the last conv layer (ReLU'd), upsampled bilinearly to the image size;
    `saliency`: |d logit_t / d x|, max over channels.
    """
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    if method not in ("gradcam", "saliency"):
        raise ConfigError(f"attribution method {method!r}; accepted: gradcam, saliency")
    device = next(model.parameters()).device
    per_pass = images_per_pass(model, tuple(canvases.shape[1:]), max_forward, backward=True)
    out = []
    with frozen(model):
        for sl in class_chunks(len(targets), 1, per_pass):
            x, t = canvases[sl].to(device), targets[sl].to(device)
            if method == "saliency":
                # An input that already asks for gradients: Captum would switch them on itself, with a warning.
                attr = Saliency(model).attribute(x.clone().requires_grad_(), target=t, abs=True).amax(1)  # [k, H, W]
            else:
                cam = LayerGradCam(model, last_conv(model)).attribute(x, target=t, relu_attributions=True)
                attr = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear").amax(1)
            out.append(attr.detach().cpu())
    return torch.cat(out)


@dataclass
class UAPConfig:
    """A targeted universal perturbation per class, L-infinity `eps`, signed-gradient steps."""

    eps: float = 0.1
    steps: int = 200
    batch_size: int = 32
    step_size: float | None = None  # null: eps / 10
    seed: int = 0


def targeted_uaps(
    model: nn.Module,
    targets: list[int],
    pool: ImageSet,
    cfg: UAPConfig | None = None,
    run: RunOptions | None = None,
) -> torch.Tensor:
    """[K, C, H, W] perturbations in [-eps, eps]: each pushes other-class pool images to its target.

    Each step passes the classes in chunks of at most `run.max_forward` images (None: from memory);
    a class's perturbation only sees its own images, so chunks do not change it.
    """
    cfg = cfg if cfg is not None else UAPConfig()
    pool_images, pool_labels = pool
    run = run or RunOptions()
    device = next(model.parameters()).device
    k = len(targets)
    _, c, h, w = pool_images.shape
    step = cfg.step_size if cfg.step_size is not None else cfg.eps / 10
    delta = torch.zeros(k, c, h, w, device=device)
    tgt = torch.tensor(targets, device=device)
    batches = OtherClassBatches(pool_labels, targets, cfg.batch_size, cfg.seed, [4_000_000 + t for t in targets])
    pool_x = pool_images.to(device)
    chunks = list(class_chunks(k, cfg.batch_size, images_per_pass(model, (c, h, w), run.max_forward, backward=True)))
    with frozen(model):
        for _ in tqdm(range(cfg.steps), desc=f"UAP ({k} classes)", disable=not run.progress, leave=False):
            idx = batches.next().to(device)  # [K, B]
            for sl in chunks:
                x = as_float(pool_x[idx[sl]])  # [k, B, C, H, W]
                d = delta[sl].clone().requires_grad_(True)
                adv = (x + d.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
                ce = F.cross_entropy(model(adv), tgt[sl].repeat_interleave(cfg.batch_size), reduction="none")
                (grad,) = torch.autograd.grad(ce.view(-1, cfg.batch_size).mean(1).sum(), d)
                with torch.no_grad():
                    delta[sl] = (d - step * grad.sign()).clamp(-cfg.eps, cfg.eps)
    return delta.detach().cpu()


@dataclass
class PatchConfig:
    """A universal patch per class and ratio: k pixels, values free in [0, 1] (see `universal_patches`)."""

    steps: int = 200  # stage 1: continuous mask and values
    finetune_steps: int = 100  # stage 2: the k pixels' values under the hard paste
    batch_size: int = 32
    lr: float = 0.1
    alpha: float = 0.2  # the search's weighting of cross-entropy and mask size
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"universal_patch.{key}={getattr(self, key)} must be positive")
        if self.finetune_steps < 0:
            raise ConfigError(f"universal_patch.finetune_steps={self.finetune_steps} must be 0 or more")


def universal_patches(
    model: nn.Module,
    targets: list[int],
    ratios: list[float],
    pool: ImageSet,
    cfg: PatchConfig | None = None,
    run: RunOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [K, R, C, H, W] in [0, 1], pixels [K, R, 1, H, W] bool): a universal patch per class and ratio.

    The fair baseline at the pattern's budget. A pattern is k pixels copied from a natural canvas and
    hard-pasted; the targeted UAP moves its top-k pixels by at most eps, so it cannot reach what a
    pasted pixel can. This patch has everything the pattern has (k pixels, values anywhere in [0, 1],
    the same search pool, the same hard paste on the same eval images) except the canvas: its values
    are free. So it asks what k pixels can do at all, and the pattern's ASR next to it says how much
    of that a natural image's pixels already carry.

    Choosing k positions is combinatorial, so stage 1 relaxes it exactly as the search does: a
    continuous mask m and values v (both sigmoid-parametrised, starting at 0.5), loss
    `alpha * CE(f(m*v + (1-m)*x), t) + (1 - alpha) * sum(m) / (H*W/2)`, Adam. Stage 2 keeps the k
    largest mask values at each ratio and fine-tunes only their values with the hard paste itself
    (cross-entropy), closing the gap between the soft blend it was trained under and the paste it
    is evaluated with. Other-class batches come from each class's own generator, as in the UAP.
    """
    cfg = cfg if cfg is not None else PatchConfig()
    pool_images, pool_labels = pool
    run = run or RunOptions()
    device = next(model.parameters()).device
    k, r_count = len(targets), len(ratios)
    _, c, h, w = pool_images.shape
    b = cfg.batch_size
    tgt = torch.tensor(targets, device=device)
    batches = OtherClassBatches(pool_labels, targets, b, cfg.seed, [5_000_000 + t for t in targets])
    pool_x = pool_images.to(device)
    per_pass = images_per_pass(model, (c, h, w), run.max_forward, backward=True)
    mask_logit = torch.zeros(k, 1, h, w, device=device, requires_grad=True)  # m = 0.5, the search's mask_init
    value_logit = torch.zeros(k, c, h, w, device=device, requires_grad=True)  # v = 0.5
    opt = torch.optim.Adam([mask_logit, value_logit], lr=cfg.lr)
    with frozen(model):
        for _ in tqdm(range(cfg.steps), desc=f"universal patch ({k} classes)", disable=not run.progress, leave=False):
            idx = batches.next().to(device)  # [K, B]
            opt.zero_grad(set_to_none=True)
            for sl in class_chunks(k, b, per_pass):
                x = as_float(pool_x[idx[sl]])  # [k, B, C, H, W]
                m = torch.sigmoid(mask_logit[sl]).unsqueeze(1)  # [k, 1, 1, H, W]
                v = torch.sigmoid(value_logit[sl]).unsqueeze(1)  # [k, 1, C, H, W]
                ce = F.cross_entropy(model((m * v + (1 - m) * x).flatten(0, 1)), tgt[sl].repeat_interleave(b),
                                     reduction="none").view(-1, b).mean(1)
                size = m.flatten(1).sum(1) / (h * w / 2)
                (cfg.alpha * ce + (1 - cfg.alpha) * size).sum().backward()
            opt.step()
        masks = torch.sigmoid(mask_logit).detach()
        pixels = torch.stack([top_pixels(masks, r) for r in ratios], 1)  # [K, R, 1, H, W]
        # Stage 2: every (class, ratio) patch its own values, fine-tuned under the hard paste.
        fine = value_logit.detach().repeat_interleave(r_count, 0).requires_grad_(True)  # [K*R, C, H, W]
        pix = pixels.flatten(0, 1).unsqueeze(1)  # [K*R, 1, 1, H, W]
        tgt_kr = tgt.repeat_interleave(r_count)
        opt = torch.optim.Adam([fine], lr=cfg.lr)
        for _ in tqdm(range(cfg.finetune_steps), desc="universal patch values", disable=not run.progress, leave=False):
            idx = batches.next().to(device).repeat_interleave(r_count, 0)  # [K*R, B]: a class's ratios share a batch
            opt.zero_grad(set_to_none=True)
            for sl in class_chunks(k * r_count, b, per_pass):
                x = as_float(pool_x[idx[sl]])  # [n, B, C, H, W]
                pasted = torch.where(pix[sl], torch.sigmoid(fine[sl]).unsqueeze(1), x).flatten(0, 1)
                F.cross_entropy(model(pasted), tgt_kr[sl].repeat_interleave(b)).mul(sl.stop - sl.start).backward()
            opt.step()
        values = torch.sigmoid(fine).detach().view(k, r_count, c, h, w)
    return values.cpu(), pixels.cpu()
