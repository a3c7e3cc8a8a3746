"""`build_model(name, ...)`: one registry for every architecture, wrapped with its normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from classwise.errors import ConfigError
from classwise.models.normalize import NormalizedClassifier
from classwise.models.resnet import PreActResNet18, ResNet18
from classwise.models.small_cnn import SmallCNN
from classwise.models.vgg import VGG16BN


def _torchvision(
    in_channels: int, num_classes: int, arch: str = "resnet50", pretrained: bool = False, **kwargs
) -> nn.Module:
    """Any torchvision classifier by name; the first conv is rebuilt when images are not RGB."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as exc:
        names = ", ".join(torchvision.models.list_models(module=torchvision.models)[:12])
        raise ConfigError(f"model.arch={arch!r} is not a torchvision classifier; accepted e.g.: {names}, ...") from exc
    weights = "DEFAULT" if pretrained else None
    if pretrained:
        net = builder(weights=weights)
        if num_classes != net_num_classes(net):
            _replace_head(net, num_classes)
    else:
        net = builder(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_stem(net, in_channels)
    return net


def net_num_classes(net: nn.Module) -> int:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def _replace_head(net: nn.Module, num_classes: int) -> None:
    for name in ("fc", "head", "heads"):
        head = getattr(net, name, None)
        if isinstance(head, nn.Linear):
            setattr(net, name, nn.Linear(head.in_features, num_classes))
            return
    classifier = getattr(net, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
        return
    raise ConfigError(f"model: cannot replace the head of {type(net).__name__} for {num_classes} classes")


def _replace_stem(net: nn.Module, in_channels: int) -> None:
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding, bias=child.bias is not None
                ))
                return


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "preact_resnet18": PreActResNet18,
    "vgg16_bn": VGG16BN,
    "resnet50": lambda in_channels, num_classes, pretrained=False, **kw: _torchvision(
        in_channels, num_classes, "resnet50", pretrained, **kw
    ),
    "torchvision": _torchvision,
}

_MIN_SIZE = {"small_cnn": SmallCNN.min_image_size, "resnet18": 8, "preact_resnet18": 8, "vgg16_bn": 32,
             "resnet50": 32, "torchvision": 32}


def min_image_size(name: str) -> int:
    return _MIN_SIZE[name]


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs,
) -> NormalizedClassifier:
    """Build architecture `name` for the dataset's channels, classes and size, normalisation inside."""
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; accepted: {', '.join(sorted(MODELS))}")
    if image_size < _MIN_SIZE[name]:
        raise ConfigError(
            f"dataset.image_size={image_size} is too small for model={name}; accepted: image_size >= {_MIN_SIZE[name]}"
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"dataset.mean/std have {len(mean)}/{len(std)} values; accepted: one per channel ({in_channels})")
    if name == "small_cnn":
        kwargs.setdefault("image_size", image_size)
    net = MODELS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)
    return NormalizedClassifier(net, mean, std)
