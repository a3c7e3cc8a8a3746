"""Backdoor triggers: small objects that stamp a trigger on a batch of [0, 1] images [N, C, H, W]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from classwise.errors import ConfigError

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


def _corner(position: str | Sequence[int], size: int, image_size: int, margin: int) -> tuple[int, int]:
    """Top-left pixel of a `size` square at a named corner or an explicit [row, col]."""
    if isinstance(position, str):
        if position not in CORNERS:
            raise ConfigError(f"trigger.position={position!r} is unknown; accepted: {', '.join(CORNERS)} or [row, col]")
        far = image_size - size - margin
        row = far if position.startswith("bottom") else margin
        col = far if position.endswith("right") else margin
    else:
        row, col = (int(v) for v in position)
    if not (0 <= row and 0 <= col and row + size <= image_size and col + size <= image_size):
        raise ConfigError(f"trigger.position={list(position) if not isinstance(position, str) else position} with "
                          f"size {size} does not fit a {image_size}x{image_size} image")
    return row, col


class Trigger:
    """Base: `apply(images)` returns triggered copies; `region` is the [1, H, W] bool area it touches."""

    name = "trigger"
    clean_label = False

    def __init__(self, image_size: int, channels: int):
        self.image_size, self.channels = image_size, channels

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def region(self) -> torch.Tensor:
        return torch.ones(1, self.image_size, self.image_size, dtype=torch.bool)

    def example(self) -> torch.Tensor:
        """The trigger on a mid-gray image, for figures."""
        return self.apply(torch.full((1, self.channels, self.image_size, self.image_size), 0.5))[0]


class PatchTrigger(Trigger):
    """An opaque square patch (BadNets; Trojan's square watermark): its pixels replace the image's."""

    def __init__(self, image_size: int, channels: int, size: int, position, margin: int, patch: torch.Tensor):
        super().__init__(image_size, channels)
        if size < 1 or size > image_size:
            raise ConfigError(f"trigger.size={size} must be in 1..{image_size}")
        self.size = size
        self.row, self.col = _corner(position, size, image_size, margin)
        self.patch = patch.expand(channels, size, size).clone()  # [C, s, s] in [0, 1]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        out[:, :, self.row : self.row + self.size, self.col : self.col + self.size] = self.patch.to(images)
        return out

    @property
    def region(self) -> torch.Tensor:
        r = torch.zeros(1, self.image_size, self.image_size, dtype=torch.bool)
        r[:, self.row : self.row + self.size, self.col : self.col + self.size] = True
        return r


class BadNets(PatchTrigger):
    """BadNets (Gu et al. 2017): a small white square or checkerboard in a corner."""

    name = "badnets"
    CONTENTS = ("white", "checkerboard", "random")

    def __init__(self, image_size: int, channels: int, size: int = 3, position="bottom_right", margin: int = 1,
                 content: str = "white", seed: int = 0):
        if content not in self.CONTENTS:
            raise ConfigError(f"trigger.content={content!r} is unknown; accepted: {', '.join(self.CONTENTS)}")
        if content == "white":
            patch = torch.ones(1, size, size)
        elif content == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            patch = ((ii + jj) % 2 == 0).float().unsqueeze(0)
        else:  # black-and-white pixels drawn from `seed`, one value per channel
            patch = torch.randint(0, 2, (channels, size, size), generator=torch.Generator().manual_seed(seed)).float()
        super().__init__(image_size, channels, size, position, margin, patch)
        self.content = content


class Trojan(PatchTrigger):
    """A Trojan-style square watermark (Liu et al. 2018): a framed square with a fixed inner mark."""

    name = "trojan"

    def __init__(self, image_size: int, channels: int, size: int = 5, position="bottom_right", margin: int = 1):
        patch = torch.zeros(1, size, size)
        patch[:, 0, :] = patch[:, -1, :] = patch[:, :, 0] = patch[:, :, -1] = 1.0  # frame
        c = size // 2
        patch[:, c, c] = 1.0
        if size >= 5:
            patch[:, c - 1 : c + 2, c] = 1.0
            patch[:, c, c - 1 : c + 2] = 1.0
        super().__init__(image_size, channels, size, position, margin, patch)


class Blend(Trigger):
    """Blended injection (Chen et al. 2017): x' = (1 - alpha) x + alpha * a fixed random pattern."""

    name = "blend"

    def __init__(self, image_size: int, channels: int, alpha: float = 0.1, seed: int = 1234):
        super().__init__(image_size, channels)
        if not 0 < alpha <= 1:
            raise ConfigError(f"trigger.alpha={alpha} must be in (0, 1]")
        self.alpha = alpha
        g = torch.Generator().manual_seed(seed)
        self.pattern = torch.rand(channels, image_size, image_size, generator=g)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return ((1 - self.alpha) * images + self.alpha * self.pattern.to(images)).clamp(0, 1)


class SIG(Trigger):
    """SIG (Barni et al. 2019): a horizontal sinusoid added to the image; clean-label (labels kept)."""

    name = "sig"
    clean_label = True

    def __init__(self, image_size: int, channels: int, delta: float = 20 / 255, frequency: float = 6):
        super().__init__(image_size, channels)
        if not 0 < delta <= 1 or frequency <= 0:
            raise ConfigError(f"trigger.delta={delta} must be in (0, 1] and trigger.frequency={frequency} positive")
        self.delta, self.frequency = delta, frequency
        cols = torch.arange(image_size, dtype=torch.float32)
        self.signal = (delta * torch.sin(2 * math.pi * cols * frequency / image_size)).view(1, 1, image_size)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.signal.to(images)).clamp(0, 1)


class WaNet(Trigger):
    """WaNet (Nguyen & Tran 2021): a fixed smooth warp of the whole image, no pixel added.

    A random field of `k` x `k` control offsets (from `seed`), normalised to mean magnitude 1 and
    upsampled bicubically to the image, moves each pixel by up to about `strength` / image_size of
    the image's half-width; the image is resampled there (bilinear). The paper's "noise mode"
    (random warps kept at their true labels) is not used: this is the all-to-one warp alone.
    """

    name = "wanet"

    def __init__(self, image_size: int, channels: int, k: int = 4, strength: float = 0.5, seed: int = 0):
        super().__init__(image_size, channels)
        if not 2 <= k <= image_size or strength <= 0:
            raise ConfigError(f"trigger.k={k} must be in 2..{image_size} and trigger.strength={strength} positive")
        self.k, self.strength, self.seed = k, strength, seed
        g = torch.Generator().manual_seed(seed)
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = torch.nn.functional.interpolate(ins, size=image_size, mode="bicubic", align_corners=True)
        noise = noise.permute(0, 2, 3, 1)  # [1, H, W, 2]
        line = torch.linspace(-1, 1, image_size)
        xx, yy = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((yy, xx), 2).unsqueeze(0)  # [1, H, W, 2] as grid_sample wants (x, y)
        self.grid = (identity + strength * noise / image_size).clamp(-1, 1)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.grid.to(images).expand(len(images), -1, -1, -1)
        return torch.nn.functional.grid_sample(images, grid, mode="bilinear", align_corners=True).clamp(0, 1)
