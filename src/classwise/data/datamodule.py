"""The LightningDataModule: train / val from the training set, disjoint search / eval from the test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset

from classwise.data.sources import ImageSource, load_source
from classwise.errors import ConfigError


def split_test_per_class(labels: torch.Tensor, search_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the search pool (a `search_fraction` share of every class) and of the disjoint eval set."""
    g = torch.Generator().manual_seed(seed)
    search, evaluation = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = max(1, round(search_fraction * len(idx)))
        search.append(idx[:n])
        evaluation.append(idx[n:])
    return torch.cat(search).sort().values, torch.cat(evaluation).sort().values


class Augmented(Dataset):
    """Random crop (4-pixel padding) and horizontal flip on the fly: the usual CIFAR recipe."""

    def __init__(self, dataset: Dataset, image_size: int):
        from torchvision.transforms import v2

        self.dataset = dataset
        self.transform = v2.Compose([v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return self.transform(x), y


class ClasswiseDataModule(L.LightningDataModule):
    """Loads a dataset source once and serves train / val / test loaders and search / eval tensors."""

    def __init__(
        self,
        dataset: dict[str, Any],
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        search_fraction: float = 0.2,
        train_subset: int | None = None,
        augment: bool = False,
        seed: int = 0,
        poisoner: Any = None,
    ):
        super().__init__()
        if batch_size <= 0:
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer")
        if not 0 < search_fraction < 1:
            raise ConfigError(f"data.search_fraction={search_fraction} must be in (0, 1)")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        self.dataset_cfg = dict(dataset)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.search_fraction = search_fraction
        self.train_subset = train_subset
        self.augment = augment
        self.seed = seed
        self.poisoner = poisoner
        self.source: ImageSource | None = None
        self.splits: dict[str, torch.Tensor] = {}
        self.train_set: Dataset | None = None

    @classmethod
    def from_source(cls, source: ImageSource, dataset: dict[str, Any], **kwargs: Any) -> ClasswiseDataModule:
        """A datamodule over a source already built (a user's Dataset or tensors: the notebook API's path)."""
        dm = cls(dataset=dataset, **kwargs)
        dm.source = source
        return dm

    # ---- loading -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node (local rank 0; the others wait at a barrier): the only
        # place that stages system copies or downloads, so ranks never write one root at once.
        self._load_source(download=bool(self.dataset_cfg.get("download", False)))

    def _load_source(self, download: bool = False) -> ImageSource:
        if self.source is None:
            cfg = {k: v for k, v in self.dataset_cfg.items() if k not in ("mean", "std", "download")}
            self.source = load_source(**cfg, **({"download": download} if "download" in self.dataset_cfg else {}))
        return self.source

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        source = self._load_source()  # never downloads: prepare_data did, on local rank 0
        g = torch.Generator().manual_seed(self.seed)
        n_train = len(source.train)
        order = torch.randperm(n_train, generator=g)
        if self.train_subset:
            order = order[: self.train_subset]
        n_val = int(round(self.val_fraction * len(order)))
        self.splits["val"] = order[:n_val].sort().values
        self.splits["train"] = order[n_val:].sort().values
        search, evaluation = split_test_per_class(source.test.targets, self.search_fraction, self.seed)
        self.splits["search"], self.splits["eval"] = search, evaluation
        train_set: Dataset = source.train
        if self.poisoner is not None:
            train_set = self.poisoner.poison_dataset(train_set, self.splits["train"], self.seed)
        self.train_set = train_set

    # ---- facts the rest of the run needs ---------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self._load_source().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def save_splits(self, path: str | Path) -> Path:
        """Write the split indices (int64 tensors) as safetensors; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.splits.items()}, str(path))
        return path

    @staticmethod
    def load_splits(path: str | Path) -> dict[str, torch.Tensor]:
        return load_file(str(path))

    def split_tensors(self, split: str, max_items: int | None = None, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images [N, C, H, W] and labels [N] of `search`, `eval`, `train` or `val`.

        `raw` (search and eval only): images as the source stores them, uint8 for every file-backed
        source (a quarter of float32's memory: ImageNet's val split is ~7 GB instead of ~30 GB a
        rank); the search converts them per batch (patterns.search.as_float).
        """
        self.setup()
        dataset = self.train_set if split in ("train", "val") else self.source.test
        idx = self.splits[split]
        if max_items is not None:
            idx = idx[:max_items]
        return dataset.batch(idx, raw=True) if raw and split in ("search", "eval") else dataset.batch(idx)

    # ---- loaders -------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        train: Dataset = Subset(self.train_set, self.splits["train"].tolist())
        if self.augment:
            train = Augmented(train, int(self.dataset_cfg["image_size"]))
        return self._loader(train, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(Subset(self.train_set, self.splits["val"].tolist()), False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The test set, each image on exactly one rank.

        Lightning's DistributedSampler pads the ranks to equal counts, so padding images would count
        twice in the test accuracy; ranks one batch apart are safe here, as testing runs no collective
        per batch (the model is not DDP-wrapped outside fit).
        """
        sampler, trainer = None, self.trainer
        if trainer is not None and trainer.world_size > 1:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(self.source.test, shuffle=False, **trainer.distributed_sampler_kwargs)
        return self._loader(self.source.test, False, self.eval_batch_size, sampler)
