"""How many images one pass of a class-batched loop holds: a configured number, or one read from the device.

Every class-batched pass (search, UAP, universal patch, Neural Cleanse, attribution maps, evaluation)
cuts the class dimension into chunks of at most this many images, so 1,000 ImageNet classes fit on
one GPU. Chunks never change a class's result: classes do not interact inside a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

MEMORY_SHARE = 0.5  # of the device's free memory one pass may take (the rest: the model, the pool, fragmentation)
CPU_FORWARD = 2048  # images per pass where the device reports no memory (CPU): a cache-friendly size


@dataclass(frozen=True)
class RunOptions:
    """How an optimised baseline or detector (UAP, universal patch, Neural Cleanse) runs, apart from
    its config: at most `max_forward` images a pass (None: from the device's memory) and a progress bar."""

    max_forward: int | None = None
    progress: bool = True


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no weight gradients for the duration; restores both afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


class CudaMemory:
    """Free / total bytes and the peak allocation of a callable, read from CUDA's allocator."""

    def free_total(self, device: torch.device) -> tuple[int, int]:
        return torch.cuda.mem_get_info(device)

    def peak_bytes(self, device: torch.device, fn: Callable[[], None]) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start


def memory_source(device: torch.device) -> CudaMemory | None:
    """What measures memory on `device`: CUDA's allocator, or None where the device reports none (CPU).

    The one seam through which a test drives the probe on a CPU (a fake source with the same two methods).
    """
    return CudaMemory() if device.type == "cuda" else None


def activation_bytes(model: nn.Module, image_shape: tuple[int, ...], backward: bool, device: torch.device,
                     memory: CudaMemory | None = None) -> int:
    """Peak extra bytes one image takes in a forward (+ input-gradient backward) pass.

    Two images go through the model and the peak allocation above the start is halved: saved
    activations scale with the batch, the weights do not. The probe runs in eval mode: after `fit`
    the model is in train mode, and a train-mode forward of noise would move BatchNorm's running
    statistics, so every later pass would see another model than the one saved.
    """
    memory = memory or memory_source(device) or CudaMemory()

    def probe() -> None:
        x = torch.rand(2, *image_shape, device=device, requires_grad=backward)
        with torch.set_grad_enabled(backward):
            out = model(x)
            if backward:
                torch.autograd.grad(out.float().logsumexp(1).sum(), x)

    with frozen(model):
        peak = memory.peak_bytes(device, probe)
    return max(1, peak // 2)


def images_per_pass(model: nn.Module, image_shape: tuple[int, ...], requested: int | None, backward: bool,
                    default: int = CPU_FORWARD) -> int:
    """`requested` when set; where the device reports memory, a share of its free memory over the measured
    bytes per image; else `default`.

    With deterministic algorithms on (`reproducible=true`) the size comes from the device's *total*
    memory, so it is the same number on every run on that GPU model, whatever else holds memory.
    """
    if requested is not None:
        return max(1, int(requested))
    device = next(model.parameters()).device
    memory = memory_source(device)
    if memory is None:
        return default
    free, total = memory.free_total(device)
    budget = (total if torch.are_deterministic_algorithms_enabled() else free) * MEMORY_SHARE
    return max(1, int(budget // activation_bytes(model, image_shape, backward, device, memory)))


def class_chunks(n_classes: int, per_class: int, images: int) -> Iterator[slice]:
    """Slices of the class dimension holding at most `images` images (`per_class` each), at least one class."""
    step = max(1, images // max(1, per_class))
    for start in range(0, n_classes, step):
        yield slice(start, min(start + step, n_classes))
