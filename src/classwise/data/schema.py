"""Schemas of the `dataset` group and the top-level `data` block, registered in Hydra's ConfigStore.

Hydra merges each YAML into its schema when it composes, so a key the schema does not have or a value
of the wrong type (`data.batch_size=abc`, `dataset.image_size=big`) fails before anything runs, said in
one line by `classwise.config.check_composition`. Ranges and names are checked in `config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class AdversarialConfig:
    """The dataset's PGD budget: adversarial training, robust accuracy and the targeted UAP's eps."""

    eps: float = 0.1
    step_size: float = 0.025
    steps: int = 10


@dataclass
class DatasetConfig:
    """One option of conf/dataset (the synthetic source also reads num_train, num_test and seed)."""

    name: str = MISSING
    root: str | None = None
    download: bool = False
    image_size: int = MISSING
    channels: int = MISSING
    num_classes: int = MISSING
    mean: list[float] | None = None
    std: list[float] | None = None
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    num_train: int | None = None
    num_test: int | None = None
    seed: int | None = None


@dataclass
class DataConfig:
    """How the splits are made and fed (`data:` in conf/train.yaml and conf/search.yaml)."""

    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    val_fraction: float = 0.1
    search_fraction: float = 0.2  # each class's share of the test split that forms the search pool
    train_subset: int | None = None
    augment: bool = False


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(group="dataset", name="schema", node=DatasetConfig)
    store.store(name="data_schema", node={"data": DataConfig})
