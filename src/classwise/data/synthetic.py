"""A deterministic in-memory image dataset where each class draws its own smooth template."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _smooth_noise(generator: torch.Generator, n: int, channels: int, size: int, grid: int) -> torch.Tensor:
    """Random low-frequency fields in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = torch.rand(n, channels, grid, grid, generator=generator)  # [N, C, g, g]
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine.clamp(0, 1)


def make_synthetic(
    num_train: int,
    num_test: int,
    image_size: int,
    channels: int,
    num_classes: int,
    seed: int,
    template_weight: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return uint8 images [N, C, H, W] and int64 labels for a train and a test split.

    Each class has a fixed smooth template (drawn from `seed`); an image is its class template
    blended with a fresh smooth field and pixel noise, so a small CNN separates the classes in a
    few dozen steps while no single pixel decides the label.
    """
    g = torch.Generator().manual_seed(seed)
    templates = _smooth_noise(g, num_classes, channels, image_size, grid=4)  # [K, C, H, W]

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        field = _smooth_noise(g, n, channels, image_size, grid=6)
        noise = torch.rand(n, channels, image_size, image_size, generator=g)
        images = template_weight * templates[labels] + (1 - template_weight) * (0.7 * field + 0.3 * noise)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_x, train_y = split(num_train)
    test_x, test_y = split(num_test)
    return train_x, train_y, test_x, test_y
