"""Canvas choice: which image of the target class the pattern is cut from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from classwise.errors import ConfigError
from classwise.patterns.search import frozen, stream_seed

STRATEGIES = ("index", "most_confident", "best_of_k")
SOURCES = ("train", "search")


@dataclass
class CanvasConfig:
    """`strategy`: index | most_confident | best_of_k; `source`: train | search (where candidates come from;
    None: as the threat model says, see `pipeline.detection_step.resolve_canvas_source`)."""

    strategy: str = "most_confident"
    source: str | None = "train"
    index: int = 0  # for `index`: position among the class's candidates, in dataset order
    k: int = 4  # for `best_of_k`: the k most confident candidates are searched together
    max_candidates: int = 2000  # per class, a seeded subset when a class has more

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.canvas.strategy={self.strategy!r} is unknown; accepted: {', '.join(STRATEGIES)}")
        if self.source is not None and self.source not in SOURCES:
            raise ConfigError(f"search.canvas.source={self.source!r} is unknown; accepted: {', '.join(SOURCES)}")
        if self.index < 0:
            raise ConfigError(f"search.canvas.index={self.index} must be >= 0")
        if self.k < 1 or self.max_candidates < 1:
            raise ConfigError(f"search.canvas.k={self.k} and search.canvas.max_candidates={self.max_candidates} must be >= 1")


@dataclass
class CanvasPool:
    """Candidate canvases: dataset indices of one split, their labels, and a way to fetch images."""

    split: str
    indices: torch.Tensor  # [N] indices into the split's dataset
    labels: torch.Tensor  # [N] labels as the model was trained on them
    fetch: Callable[[torch.Tensor], torch.Tensor]  # dataset indices -> images [n, C, H, W]

    def of_class(self, target: int) -> torch.Tensor:
        return self.indices[self.labels == target].sort().values


def check_canvas_index(pool: CanvasPool, targets: list[int], cfg: CanvasConfig) -> None:
    """Fail before compute when a class has no candidate, or fewer than `index + 1` for `index`."""
    for t in targets:
        n = int((pool.labels == t).sum())
        if n == 0:
            raise ConfigError(f"search.canvas.source={pool.split} has no image of class {t}; accepted: a source holding every searched class")
        if cfg.strategy == "index" and cfg.index >= n:
            raise ConfigError(
                f"search.canvas.index={cfg.index} is outside class {t}, which has {n} images in "
                f"search.canvas.source={pool.split}; accepted: 0..{n - 1}"
            )


@torch.no_grad()
def target_margins(model: nn.Module, images: torch.Tensor, target: int, batch_size: int = 1024) -> torch.Tensor:
    """logit[target] - max other logit, per image [n]: confidence that does not saturate like softmax."""
    device = next(model.parameters()).device
    out = []
    with frozen(model), torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(images[i : i + batch_size].to(device)).float()
            tgt = logits[:, target].clone()
            logits[:, target] = float("-inf")
            out.append((tgt - logits.max(1).values).cpu())
    return torch.cat(out)


def choose_candidates(model: nn.Module, pool: CanvasPool, target: int, cfg: CanvasConfig, seed: int) -> list[int]:
    """Dataset indices of the canvas candidates of `target`: one, or k for `best_of_k`."""
    members = pool.of_class(target)
    if cfg.strategy == "index":
        return [int(members[cfg.index])]
    if len(members) > cfg.max_candidates:
        g = torch.Generator().manual_seed(stream_seed(seed, 1_000_000 + target))
        members = members[torch.randperm(len(members), generator=g)[: cfg.max_candidates]].sort().values
    margins = target_margins(model, pool.fetch(members), target)
    take = 1 if cfg.strategy == "most_confident" else min(cfg.k, len(members))
    # Stable sort: equal margins keep dataset order, so the choice is reproducible.
    order = torch.sort(margins, descending=True, stable=True).indices[:take]
    return [int(members[i]) for i in order]
