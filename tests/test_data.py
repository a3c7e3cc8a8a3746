"""Data: the finder (local, system copy, download, clear error), splits, the synthetic source."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from classwise.data import ClasswiseDataModule, load_source, sources
from classwise.errors import ConfigError


def _idx_images(n: int) -> bytes:
    return struct.pack(">IIII", 2051, n, 28, 28) + bytes(range(256)) * (n * 784 // 256) + bytes(n * 784 % 256)


def _idx_labels(n: int) -> bytes:
    return struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))


@pytest.fixture
def fake_system_copy(tmp_path, monkeypatch):
    system = tmp_path / "system"
    system.mkdir()
    for prefix, n in (("train", 60), ("t10k", 30)):
        (system / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_images(n)))
        (system / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(n)))
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", system)
    return system


def test_finder_uses_the_system_copy(tmp_path, fake_system_copy):
    src = load_source("fashion_mnist", root=tmp_path / "data", download=False)
    assert len(src.train) == 60 and len(src.test) == 30
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    x, y = src.train[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and y == 0


def test_jobs_starting_at_once_each_load_the_system_copy(tmp_path, fake_system_copy):
    """A sweep's jobs start together on one data folder: none may read, or trip over, another's half-written
    file (seen: two population jobs, one failing on the other's rename of a shared `.part` file)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "data"
    # One job has staged one file; the rest find it there and must not take the folder for complete.
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(30))
    with ThreadPoolExecutor(6) as pool:
        loaded = list(pool.map(lambda _: load_source("fashion_mnist", root=root, download=False), range(6)))
    assert all(len(s.train) == 60 and len(s.test) == 30 for s in loaded)
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    assert (raw / "train-images-idx3-ubyte").read_bytes() == _idx_images(60)


def test_a_read_only_partial_data_folder_is_a_one_line_error(tmp_path, fake_system_copy, monkeypatch):
    """A folder the job may not write to, with some of the files: no PermissionError traceback."""
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(30))

    def refuse(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sources.shutil, "copyfileobj", refuse)
    with pytest.raises(ConfigError, match="no files found under dataset.root"):
        load_source("fashion_mnist", root=tmp_path / "data", download=False)


def test_finder_error_names_all_three_options(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(ConfigError) as err:
        load_source("fashion_mnist", root=tmp_path / "data", download=False)
    msg = str(err.value)
    assert "dataset.root" in msg and "dataset-fashion-mnist" in msg and "download" in msg and "\n" not in msg


def test_unknown_source_and_missing_imagefolder(tmp_path):
    with pytest.raises(ConfigError, match="dataset.name"):
        load_source("imagenet21k")
    with pytest.raises(ConfigError, match="does not exist"):
        load_source("imagefolder", root=tmp_path / "nope", image_size=32, channels=3)


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    src = load_source("imagefolder", root=tmp_path, image_size=24, channels=3)
    x, y = src.test[4]
    assert src.classes == ["cat", "dog"] and x.shape == (3, 24, 24) and y == 1


def test_synthetic_is_deterministic_and_balanced():
    a = load_source("synthetic", image_size=12, channels=3, num_classes=5, num_train=100, num_test=50, seed=4)
    b = load_source("synthetic", image_size=12, channels=3, num_classes=5, num_train=100, num_test=50, seed=4)
    assert torch.equal(a.train.images, b.train.images)
    assert a.train.images.shape == (100, 3, 12, 12)
    assert torch.bincount(a.test.targets).tolist() == [10] * 5


def test_search_and_eval_are_disjoint_and_stratified(tmp_path):
    dm = ClasswiseDataModule({"name": "synthetic", "image_size": 8, "channels": 1, "num_classes": 4,
                              "num_train": 200, "num_test": 400, "seed": 0}, search_fraction=0.2, seed=1)
    dm.setup()
    s, e = dm.splits["search"], dm.splits["eval"]
    assert not set(s.tolist()) & set(e.tolist())
    assert len(s) + len(e) == 400
    assert torch.bincount(dm.source.test.targets[s]).tolist() == [20] * 4
    assert not set(dm.splits["train"].tolist()) & set(dm.splits["val"].tolist())
    path = dm.save_splits(tmp_path / "splits.safetensors")
    loaded = ClasswiseDataModule.load_splits(path)
    assert torch.equal(loaded["search"], s)
