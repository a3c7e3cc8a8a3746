"""Dataset sources: find the files (local folder, system copy, download), return train and test sets."""

from __future__ import annotations

import gzip
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from classwise.data.synthetic import make_synthetic
from classwise.errors import ConfigError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


class TensorImages(Dataset):
    """Images held in memory as uint8 [N, C, H, W]; items are float [0, 1] images and int labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(1)
        self.images = images
        self.targets = labels.long()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.targets[index])

    def batch(self, indices: Sequence[int] | torch.Tensor, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images [n, C, H, W] and labels [n] for many indices at once; `raw`: as stored (uint8)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[idx]
        return (images if raw else images.float().div(255)), self.targets[idx]


class TransformedImages(Dataset):
    """A file-backed torchvision dataset resized to a square image size, with a `targets` tensor."""

    def __init__(self, dataset: Dataset, targets: Sequence[int], image_size: int, channels: int):
        from torchvision.transforms import v2

        self.dataset = dataset
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)
        steps = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
        if channels == 1:
            steps.append(v2.Grayscale(1))
        # Resized as uint8, so the float image is exactly uint8 / 255 and `raw` batches lose nothing.
        self.to_uint8 = v2.Compose(steps)
        self.to_float = v2.ToDtype(torch.float32, scale=True)

    def __len__(self) -> int:
        return len(self.targets)

    def _uint8(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.to_uint8(image).as_subclass(torch.Tensor), int(label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self._uint8(index)
        return self.to_float(image), label

    def batch(self, indices: Sequence[int] | torch.Tensor, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [n, C, H, W] (float in [0, 1], or uint8 with `raw`: a quarter of the memory) and labels [n]."""
        items = [self._uint8(int(i)) for i in torch.as_tensor(indices).tolist()]
        images = torch.stack([x for x, _ in items])
        return (images if raw else self.to_float(images)), torch.tensor([y for _, y in items])


class DatasetImages(Dataset):
    """A user's Dataset of (image [C, H, W] in [0, 1], label) items, e.g. ImageFolder with ToTensor, with `targets` and `batch`."""

    def __init__(self, dataset: Dataset):
        first = dataset[0]
        if not (isinstance(first, tuple | list) and len(first) >= 2 and isinstance(first[0], torch.Tensor)
                and first[0].ndim == 3 and first[0].is_floating_point()):
            raise ConfigError(
                f"dataset items are {type(first).__name__}; accepted: (image tensor [C, H, W] in [0, 1], label), "
                "e.g. torchvision's ImageFolder(root, transform=Compose([Resize((32, 32)), ToTensor()]))"
            )
        self.dataset = dataset
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)
        self.image_shape = tuple(first[0].shape)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index][:2]
        return image, int(label)

    def batch(self, indices: Sequence[int] | torch.Tensor, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [n, C, H, W] and labels [n]; a user's items are already [0, 1] floats, so `raw` changes nothing."""
        items = [self[int(i)] for i in torch.as_tensor(indices).tolist()]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


@dataclass
class ImageSource:
    """A dataset's train and test sets with class names; images are [0, 1] floats [C, H, W]."""

    train: Dataset
    test: Dataset
    classes: list[str]


def _missing_data_error(name: str, root: Path, system_hint: str) -> ConfigError:
    return ConfigError(
        f"dataset={name}: no files found under dataset.root={root}; accepted: put the files there, "
        f"{system_hint}, or set dataset.download=true on a machine with network access"
    )


def _stage_fashion_mnist_system_copy(raw: Path) -> bool:
    """Unzip Debian's dataset-fashion-mnist files into torchvision's raw folder; True if done.

    Safe when several jobs of a sweep start at once on one data folder: each unzips into its own
    temporary file and moves it into place atomically, so no job reads a half-written file."""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if all((raw / n).exists() for n in names):
        return True
    sources = [FASHION_MNIST_SYSTEM_DIR / f"{n}.gz" for n in names]
    if not all(p.exists() for p in sources):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in zip(names, sources, strict=True):
        dst = raw / name
        if not dst.exists():
            tmp = raw / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
            try:
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.replace(tmp, dst)  # atomic; a job that got there first wrote the same bytes
            finally:
                tmp.unlink(missing_ok=True)
    return True


def _mnist_like(name: str, cls_name: str, system_stage: Callable[[Path], bool] | None, system_hint: str):
    def load(root: Path, download: bool, **_) -> ImageSource:
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        raw = root / cls_name / "raw"
        # Staged whenever a system copy exists (it skips the files already there): a folder another job is
        # still filling has some of the files, not all.
        try:
            staged = system_stage is not None and system_stage(raw)
        except PermissionError:  # a read-only data folder: use what it holds
            staged = False
        have_files = staged or (raw.exists() and any(raw.glob("*-ubyte")))
        if not have_files and not download:
            raise _missing_data_error(name, root, system_hint)
        try:
            train = cls(str(root), train=True, download=download and not have_files)
            test = cls(str(root), train=False, download=False)
        except (RuntimeError, OSError) as exc:  # torchvision raises these when a download fails
            raise _missing_data_error(name, root, system_hint) from exc
        return ImageSource(
            TensorImages(train.data, train.targets), TensorImages(test.data, test.targets), list(train.classes)
        )

    return load


def _cifar10(root: Path, download: bool, **_) -> ImageSource:
    from torchvision import datasets

    hint = "no system copy is known for it"
    try:
        train = datasets.CIFAR10(str(root), train=True, download=download)
        test = datasets.CIFAR10(str(root), train=False, download=False)
    except (RuntimeError, OSError) as exc:
        raise _missing_data_error("cifar10", root, hint) from exc

    def as_tensor(ds) -> TensorImages:
        return TensorImages(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return ImageSource(as_tensor(train), as_tensor(test), list(train.classes))


def _gtsrb(root: Path, download: bool, image_size: int, channels: int, **_) -> ImageSource:
    from torchvision import datasets

    try:
        train = datasets.GTSRB(str(root), split="train", download=download)
        test = datasets.GTSRB(str(root), split="test", download=download)
    except (RuntimeError, OSError) as exc:
        raise _missing_data_error("gtsrb", root, "no system copy is known for it") from exc
    classes = [str(i) for i in range(43)]
    return ImageSource(
        TransformedImages(train, [y for _, y in train._samples], image_size, channels),
        TransformedImages(test, [y for _, y in test._samples], image_size, channels),
        classes,
    )


def _imagefolder(root: Path, image_size: int, channels: int, **_) -> ImageSource:
    """`root/train/<class>/*` and `root/test/<class>/*` (or `val/`), e.g. an ImageNet subset."""
    from torchvision import datasets

    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise ConfigError(
            f"dataset.root={root}: an imagefolder needs sub-folders train/ and test/ (or val/), each with one folder per class"
        )
    train = datasets.ImageFolder(str(root / "train"))
    test = datasets.ImageFolder(str(test_dir))
    if train.classes != test.classes:
        raise ConfigError(f"dataset.root={root}: train/ and {test_dir.name}/ have different class folders")
    return ImageSource(
        TransformedImages(train, train.targets, image_size, channels),
        TransformedImages(test, test.targets, image_size, channels),
        list(train.classes),
    )


def _synthetic(
    image_size: int, channels: int, num_classes: int, num_train: int = 2000, num_test: int = 1000, seed: int = 0, **_
) -> ImageSource:
    train_x, train_y, test_x, test_y = make_synthetic(num_train, num_test, image_size, channels, num_classes, seed)
    classes = [f"class_{i}" for i in range(num_classes)]
    return ImageSource(TensorImages(train_x, train_y), TensorImages(test_x, test_y), classes)


SOURCES: dict[str, Callable[..., ImageSource]] = {
    "synthetic": _synthetic,
    "fashion_mnist": _mnist_like(
        "fashion_mnist", "FashionMNIST", _stage_fashion_mnist_system_copy,
        "or install Debian's system copy (apt-get install dataset-fashion-mnist)",
    ),
    "mnist": _mnist_like("mnist", "MNIST", None, "no system copy is known for it"),
    "cifar10": _cifar10,
    "gtsrb": _gtsrb,
    "imagefolder": _imagefolder,
}

NEEDS_ROOT = {"fashion_mnist", "mnist", "cifar10", "gtsrb", "imagefolder"}


def load_source(name: str, root: str | Path | None = None, **kwargs) -> ImageSource:
    """Load a dataset source by name; `kwargs` are the dataset config's fields."""
    if name not in SOURCES:
        raise ConfigError(f"dataset.name={name!r} is unknown; accepted: {', '.join(sorted(SOURCES))}")
    if name in NEEDS_ROOT:
        if root is None:
            raise ConfigError(f"dataset.root is not set for dataset={name}; give the folder holding its files")
        root = Path(root).expanduser()
        if name == "imagefolder" and not root.is_dir():
            raise ConfigError(f"dataset.root={root} does not exist; accepted: a folder with train/ and test/ class sub-folders")
        return SOURCES[name](root=root, **kwargs)
    return SOURCES[name](**kwargs)
