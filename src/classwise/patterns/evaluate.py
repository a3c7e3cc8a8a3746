"""Attack success rates of pasted patterns, batched over patterns and images."""

from __future__ import annotations

import torch
from torch import nn

from classwise.patterns.chunking import images_per_pass
from classwise.patterns.search import as_float, frozen
from classwise.progress import tqdm


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels [N] of images [N, C, H, W] (float, or uint8 converted per batch; model in eval mode)."""
    device = next(model.parameters()).device
    batch_size = images_per_pass(model, tuple(images.shape[1:]), batch_size, backward=False, default=1024)
    with frozen(model), torch.no_grad():
        return torch.cat([model(as_float(images[i : i + batch_size].to(device))).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


@torch.no_grad()
def attack_success_rates(
    model: nn.Module,
    canvases: torch.Tensor,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    max_forward: int | None = None,
    additive: bool = False,
    progress: bool = False,
    description: str = "evaluating patterns",
) -> torch.Tensor:
    """ASR [P] of P patterns: the share of images *not* of the target class predicted as the target.

    canvases [P, C, H, W], pixels [P, 1, H, W] bool, targets [P]; images [N, C, H, W], labels [N].
    With `additive`, `canvases` are perturbations added at the chosen pixels (clipped to [0, 1])
    instead of pixels pasted. Each forward pass holds up to `max_forward` pasted images (several patterns at once); larger
    passes are slower on CPU, where activations outgrow the caches (null: 256 on CPU, from free memory on a GPU).
    images may be uint8 (converted per batch).
    """
    device = next(model.parameters()).device
    max_forward = images_per_pass(model, tuple(images.shape[1:]), max_forward, backward=False, default=256)
    p_total = len(targets)
    hits = torch.zeros(p_total, dtype=torch.long)
    counts = torch.stack([(labels != t).sum() for t in targets.tolist()]) if p_total else torch.zeros(0)
    n_img = min(len(images), max(1, max_forward))
    group = max(1, max_forward // n_img)
    canvases_d, pixels_d = canvases.to(device), pixels.to(device)
    with frozen(model), torch.no_grad():
        for i in tqdm(range(0, len(images), n_img), desc=description, disable=not progress, leave=False):
            x = as_float(images[i : i + n_img].to(device))  # [n, C, H, W]
            y = labels[i : i + n_img].to(device)
            for p in range(0, p_total, group):
                ps = slice(p, min(p + group, p_total))
                if additive:
                    pert = torch.where(pixels_d[ps], canvases_d[ps], torch.zeros_like(canvases_d[ps]))
                    pasted = (x.unsqueeze(0) + pert.unsqueeze(1)).clamp(0, 1)
                else:
                    pasted = torch.where(pixels_d[ps].unsqueeze(1), canvases_d[ps].unsqueeze(1), x.unsqueeze(0))
                g = pasted.shape[0]
                pred = model(pasted.flatten(0, 1)).argmax(1).view(g, -1)  # [g, n]
                t = targets[ps].to(device).unsqueeze(1)
                hits[ps] += ((pred == t) & (y.unsqueeze(0) != t)).sum(1).cpu()
    return hits.float() / counts.clamp(min=1).float()


def base_rates(predictions: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share [P] of non-target images that the model already assigns to each target without a paste."""
    out = []
    for t in targets.tolist():
        others = labels != t
        out.append((predictions[others] == t).float().mean() if others.any() else torch.tensor(0.0))
    return torch.stack(out)


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
