"""A model's declared input convention, and the adapter that converts [0, 1] images to it at the model's door."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from classwise.errors import ConfigError
from classwise.models.normalize import Normalize

# ITU-R BT.601 luma: how torchvision's Grayscale turns RGB into one channel.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputConvention:
    """How a model wants its images: value range, per-channel mean/std (in that range's units), channels, size.

    The search always works on [0, 1] images of the dataset; `InputAdapter` converts them to this.
    `channels` / `size` None: the dataset's.
    """

    range: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None
    size: int | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, key: str = "model.input") -> InputConvention:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]} is not an input setting; accepted: range, mean, std, channels, size")
        for name in ("mean", "std"):
            if cfg.get(name) is not None:
                cfg[name] = tuple(float(v) for v in cfg[name])
        conv = cls(**cfg)
        conv.check(key)
        return conv

    def check(self, key: str = "model.input") -> None:
        if not isinstance(self.range, int | float) or self.range <= 0:
            raise ConfigError(f"{key}.range={self.range}; accepted: the model's largest pixel value, 1 ([0,1]) or 255 ([0,255])")
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"{key}.mean={self.mean} and {key}.std={self.std}: give both (per channel) or neither")
        if self.std is not None and (len(self.std) != len(self.mean) or min(self.std) <= 0):
            raise ConfigError(f"{key}.std={list(self.std)}; accepted: one positive value per channel, as many as mean")
        for name in ("channels", "size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{key}.{name}={value}; accepted: a positive integer, or null for the dataset's")

    def describe(self) -> str:
        text = f"[0,{self.range:g}]"
        if self.mean is not None:
            text += f", normalised by mean {list(self.mean)} std {list(self.std)}"
        if self.channels is not None:
            text += f", {self.channels} channels"
        if self.size is not None:
            text += f", {self.size}x{self.size}"
        return text


class InputAdapter(nn.Module):
    """Takes the dataset's [0, 1] images [N, C, H, W] and feeds `net` what its convention declares.

    Channel change (gray -> RGB by repetition, RGB -> gray by luma), bilinear resize, scaling to the
    model's range and normalisation are all differentiable, so the search's gradients pass through.
    """

    def __init__(self, net: nn.Module, convention: InputConvention, data_channels: int, data_size: int):
        super().__init__()
        convention.check()
        self.net = net
        self.convention = convention
        self.channels = convention.channels or data_channels
        if self.channels != data_channels and {self.channels, data_channels} != {1, 3}:
            raise ConfigError(f"model.input.channels={self.channels} cannot be made from the dataset's {data_channels} "
                              "channels; accepted: the same count, or 1 <-> 3")
        if convention.mean is not None and len(convention.mean) not in (1, self.channels):
            raise ConfigError(f"model.input.mean has {len(convention.mean)} values; accepted: one per model input "
                              f"channel ({self.channels})")
        self.data_channels = data_channels
        self.size = convention.size or data_size
        self.data_size = data_size
        self.normalize = (Normalize(convention.mean, convention.std) if convention.mean is not None else None)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C_data, H, W] in [0, 1]
        if self.channels != self.data_channels:
            x = x.expand(-1, 3, -1, -1) if self.channels == 3 else (x * self.luma).sum(1, keepdim=True)
        if self.size != x.shape[-1] or self.size != x.shape[-2]:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.convention.range != 1:
            x = x * self.convention.range
        if self.normalize is not None:
            x = self.normalize(x)
        return self.net(x)

