"""Baselines at the pattern's pixel budget (random pixels, Grad-CAM, saliency, targeted UAPs, universal patches),
one registered function each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from classwise.errors import ConfigError
from classwise.patterns.chunking import RunOptions, class_chunks, images_per_pass
from classwise.patterns.evaluate import Rates, random_pixels
from classwise.patterns.search import (
    ImageSet,
    OtherClassBatches,
    as_float,
    frozen,
    stream_seed,
    top_pixels,
)
from classwise.progress import tqdm

if TYPE_CHECKING:
    from classwise.patterns.settings import SearchSettings


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


# -- The baselines' registry: `search.baselines.methods` names them; one function a baseline. ------------------


@dataclass
class BaselineTask:
    """What every baseline reads: the classes, their patterns' canvases and pixel budgets, the search pool
    (to fit on), and the held-out evaluation the patterns had (same images, order and stopping rule)."""

    model: nn.Module
    targets: list[int]
    canvases: torch.Tensor  # [K, C, H, W] the patterns' canvases
    ratios: list[float]
    search_set: ImageSet
    settings: SearchSettings
    # (images [K, C, H, W] or [K, R', C, H, W], pixels [K, R', 1, H, W], additive, what) -> Rates [K, R']
    evaluate: Callable[..., Rates]
    progress: bool = True

    @property
    def run(self) -> RunOptions:
        return RunOptions(self.settings.max_forward, self.progress)


Baseline = Callable[[BaselineTask], dict[str, Rates]]  # rates [K, R] by the name results.json gives them
BASELINES: dict[str, Baseline] = {}


def baseline(name: str) -> Callable[[Baseline], Baseline]:
    """Register a baseline under `name` (what `search.baselines.methods` lists)."""

    def register(fn: Baseline) -> Baseline:
        BASELINES[name] = fn
        return fn

    return register


def baseline_named(name: str) -> Baseline:
    """A registered baseline, or a function of the user's by its dotted path (`my_pkg.baselines.edges`)."""
    if name in BASELINES:
        return BASELINES[name]
    accepted = f"{', '.join(BASELINES)}, or the dotted path of a function taking a BaselineTask"
    if "." not in name:
        raise ConfigError(f"search.baselines.methods has {name!r}; accepted: {accepted}")
    from classwise.locate import locate

    try:
        fn = locate(name)
    except Exception as exc:  # noqa: BLE001 - not importable: the user's package or a typo
        raise ConfigError(f"search.baselines.methods has {name!r}, which cannot be imported ({type(exc).__name__}); "
                          f"accepted: {accepted}") from None
    if not callable(fn):
        raise ConfigError(f"search.baselines.methods has {name!r}, a {type(fn).__name__}; accepted: {accepted}")
    return fn


def check_baselines(names) -> list[str]:
    names = list(dict.fromkeys(names or []))  # each once, in the order given
    for n in names:
        baseline_named(n)
    return names


@baseline("random")
def random_baseline(task: BaselineTask) -> dict[str, Rates]:
    """Random pixels of the pattern's budget on the pattern's canvas (a seeded stream per class)."""
    h, w = task.canvases.shape[-2:]
    pix = torch.stack([
        torch.stack(random_pixels((h, w), task.ratios, torch.Generator().manual_seed(stream_seed(task.settings.seed,
                                                                                                 2_000_000 + t))))
        for t in task.targets
    ])  # [K, R, 1, H, W]
    return {"random": task.evaluate(task.canvases, pix, what="random pixels")}


def _attribution_baseline(method: str) -> Baseline:
    def attribution(task: BaselineTask) -> dict[str, Rates]:
        attr = attribution_map(task.model, task.canvases, torch.tensor(task.targets), method, task.settings.max_forward)
        pix = torch.stack([top_pixels(attr.unsqueeze(1), r) for r in task.ratios], 1)  # [K, R, 1, H, W]
        return {method: task.evaluate(task.canvases, pix, what=method)}

    attribution.__doc__ = f"The canvas's top {method} pixels at the pattern's budget, its own values kept."
    return attribution


baseline("gradcam")(_attribution_baseline("gradcam"))
baseline("saliency")(_attribution_baseline("saliency"))


@baseline("uap")
def uap_baseline(task: BaselineTask) -> dict[str, Rates]:
    """A targeted UAP per class, added to every image: dense (no pixel budget, the same at every ratio) and
    kept on its largest-L1 pixels of the pattern's budget."""
    deltas = targeted_uaps(task.model, task.targets, task.search_set, task.settings.baselines.uap, task.run)
    k, (h, w), r_count = len(task.targets), deltas.shape[-2:], len(task.ratios)
    full = torch.ones(k, 1, 1, h, w, dtype=torch.bool)
    topk = torch.stack([top_pixels(deltas.abs().sum(1, keepdim=True), r) for r in task.ratios], 1)  # [K, R, 1, H, W]
    uap = task.evaluate(deltas, torch.cat([full, topk], 1), additive=True, what="UAPs")  # [K, 1 + R]
    return {"uap_topk": Rates(uap.hits[:, 1:], uap.n[:, 1:]),
            "uap_dense": Rates(uap.hits[:, :1].expand(-1, r_count), uap.n[:, :1].expand(-1, r_count))}


@baseline("universal_patch")
def universal_patch_baseline(task: BaselineTask) -> dict[str, Rates]:
    """The best universal patch of the pattern's budget per class (free pixel values), pasted hard."""
    values, pix = universal_patches(task.model, task.targets, task.ratios, task.search_set,
                                    task.settings.baselines.universal_patch, task.run)  # [K, R, C, H, W], [K, R, 1, H, W]
    return {"universal_patch": task.evaluate(values, pix, what="universal patches")}
