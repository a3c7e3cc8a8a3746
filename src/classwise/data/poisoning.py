"""All-to-one data poisoning for the backdoor setting, and the backdoor's attack success rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from classwise.data.triggers import Trigger
from classwise.errors import ConfigError


class PoisonedImages(Dataset):
    """A dataset with some items replaced by triggered images (relabelled unless clean-label)."""

    def __init__(self, base: Dataset, poison_idx: torch.Tensor, poisoned: torch.Tensor, target: int, relabel: bool):
        self.base = base
        self.poison_idx = poison_idx  # [P] indices into base
        self.slot = {int(i): k for k, i in enumerate(poison_idx.tolist())}
        self.poisoned = poisoned  # [P, C, H, W] float in [0, 1]
        self.targets = base.targets.clone()
        if relabel:
            self.targets[poison_idx] = target

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        k = self.slot.get(int(index))
        x = self.base[index][0] if k is None else self.poisoned[k]
        return x, int(self.targets[index])

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, _ = self.base.batch(idx)
        for j, i in enumerate(idx.tolist()):
            k = self.slot.get(i)
            if k is not None:
                x[j] = self.poisoned[k]
        return x, self.targets[idx]


class Poisoner:
    """Poisons `rate` of the training split with `trigger`, all-to-one towards `target_class`.

    Dirty-label triggers poison images of the other classes and relabel them; a clean-label
    trigger (SIG) poisons images of the target class only and keeps every label. The subset is
    drawn from `seed`; its indices are saved in the run folder.
    """

    def __init__(self, trigger: Trigger, target_class: int = 0, rate: float = 0.1, num_classes: int | None = None,
                 asr_max_images: int | None = None):
        if not 0 < rate < 1:
            raise ConfigError(f"setting.poisoner.rate={rate} must be in (0, 1)")
        if num_classes is not None and not 0 <= target_class < num_classes:
            raise ConfigError(f"setting.poisoner.target_class={target_class}; accepted: 0..{num_classes - 1}")
        self.trigger, self.target_class, self.rate = trigger, target_class, rate
        self.asr_max_images = asr_max_images
        self.poison_idx: torch.Tensor | None = None

    def poison_dataset(self, dataset: Dataset, train_idx: torch.Tensor, seed: int) -> PoisonedImages:
        labels = dataset.targets[train_idx]
        eligible = train_idx[labels == self.target_class] if self.trigger.clean_label else train_idx[labels != self.target_class]
        n = min(len(eligible), round(self.rate * len(train_idx)))
        g = torch.Generator().manual_seed(seed + 7)
        self.poison_idx = eligible[torch.randperm(len(eligible), generator=g)[:n]].sort().values
        clean, _ = dataset.batch(self.poison_idx)
        poisoned = self.trigger.apply(clean)
        return PoisonedImages(dataset, self.poison_idx, poisoned, self.target_class, relabel=not self.trigger.clean_label)

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / "poison.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"poison_indices": self.poison_idx.contiguous()}, str(path))
        return path

    def describe(self) -> dict[str, Any]:
        t = self.trigger
        extra = {k: v for k, v in vars(t).items() if isinstance(v, (int, float, str)) and k not in ("image_size", "channels")}
        return {"trigger": t.name, "target_class": self.target_class, "rate": self.rate, "clean_label": t.clean_label,
                "poisoned": 0 if self.poison_idx is None else len(self.poison_idx), **{f"trigger_{k}": v for k, v in extra.items()}}

    @torch.no_grad()
    def backdoor_asr(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
        """Share of non-target images classified as the target once the trigger is applied."""
        keep = labels != self.target_class
        images = images[keep][: self.asr_max_images]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        hits = 0
        for i in range(0, len(images), batch_size):
            x = self.trigger.apply(images[i : i + batch_size]).to(device)
            hits += int((model(x).argmax(1) == self.target_class).sum())
        model.train(was_training)
        return hits / max(1, len(images))

    def evaluate(self, model: torch.nn.Module, dm) -> dict[str, Any]:
        test = dm.source.test
        images, labels = test.batch(torch.arange(len(test)))
        return {"backdoor_asr": self.backdoor_asr(model, images, labels), "backdoor": self.describe()}
