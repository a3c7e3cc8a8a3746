"""How many images one pass of a class-batched loop holds: a configured number, or one read from the device.

Every class-batched pass (search, UAP, universal patch, Neural Cleanse, attribution maps, evaluation)
cuts the class dimension into chunks of at most this many images, so 1,000 ImageNet classes fit on
one GPU. Chunks never change a class's result: classes do not interact inside a pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

MEMORY_SHARE = 0.5  # of the device's free memory one pass may take (the rest: the model, the pool, fragmentation)
CPU_FORWARD = 2048  # images per pass where the device reports no memory (CPU): a cache-friendly size


def activation_bytes(model: nn.Module, image_shape: tuple[int, ...], backward: bool, device: torch.device) -> int:
    """Peak extra bytes one image takes in a forward (+ input-gradient backward) pass, measured on CUDA.

    Two images go through the model and the peak allocation above the start is halved: saved
    activations scale with the batch, the weights do not.
    """
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    x = torch.rand(2, *image_shape, device=device, requires_grad=backward)
    with torch.set_grad_enabled(backward):
        out = model(x)
        if backward:
            torch.autograd.grad(out.float().logsumexp(1).sum(), x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - start
    del x, out
    return max(1, peak // 2)


def images_per_pass(model: nn.Module, image_shape: tuple[int, ...], requested: int | None, backward: bool,
                    default: int = CPU_FORWARD) -> int:
    """`requested` when set; on CUDA a share of free memory over the measured bytes per image; else `default`.

    With deterministic algorithms on (`reproducible=true`) the size comes from the device's *total*
    memory, so it is the same number on every run on that GPU model, whatever else holds memory.
    """
    if requested is not None:
        return max(1, int(requested))
    device = next(model.parameters()).device
    if device.type != "cuda":
        return default
    free, total = torch.cuda.mem_get_info(device)
    budget = (total if torch.are_deterministic_algorithms_enabled() else free) * MEMORY_SHARE
    return max(1, int(budget // activation_bytes(model, image_shape, backward, device)))


def class_chunks(n_classes: int, per_class: int, images: int) -> Iterator[slice]:
    """Slices of the class dimension holding at most `images` images (`per_class` each), at least one class."""
    step = max(1, images // max(1, per_class))
    for start in range(0, n_classes, step):
        yield slice(start, min(start + step, n_classes))
