"""`build_model(name, ...)`: every architecture classwise trains, by its `_target_`, wrapped with its normalisation."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from classwise.errors import ConfigError
from classwise.models.normalize import NormalizedClassifier
from classwise.models.shipped import MODELS


def torchvision_classifier(
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


torchvision_classifier.min_image_size = 32  # type: ignore[attr-defined]


def resnet50(in_channels: int, num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """torchvision's ResNet-50 (model=resnet50), optionally with its ImageNet weights."""
    return torchvision_classifier(in_channels, num_classes, "resnet50", pretrained, **kwargs)


resnet50.min_image_size = 32  # type: ignore[attr-defined]


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


def architecture(name: str, target: str | None = None) -> Callable[..., nn.Module]:
    """The class (or function) that builds model `name`: its `_target_`, else the shipped one of that name.

    It is called with `in_channels` and `num_classes` (and `image_size` where it takes one), then the
    model config's other keys; classwise adds the dataset's normalisation around what it builds.
    """
    from classwise.locate import locate

    path = target or MODELS.get(name)
    shipped = {v: k for k, v in MODELS.items()}
    if target and (MODELS.get(name, target) != target or shipped.get(target, name) != name):
        # a name is what references, reports and checkpoints go by: it must say which architecture it is
        option = name if name in MODELS else shipped.get(target, name)
        raise ConfigError(f"model.name={name} with model._target_={target}: the shipped architectures keep their names; "
                          f"accepted: model={option} (the group option), or your own model._target_ under a name of yours")
    if path is None:
        raise ConfigError(f"model.name={name!r} is unknown; accepted: {', '.join(sorted(MODELS))}, or a model "
                          "config with a _target_ (conf/model/<yours>.yaml)")
    try:
        return locate(path)
    except Exception as exc:  # noqa: BLE001 - not importable: the user's package or a typo
        raise ConfigError(f"model._target_={path} cannot be imported ({type(exc).__name__}: {exc}); accepted: an "
                          "importable nn.Module class taking in_channels and num_classes (its package on PYTHONPATH)") from None


def architecture_of(model_cfg: dict) -> str | None:
    """What a model config builds, as results.json records it: its `_target_` (the shipped one of its name where
    it names none), timm's `arch`, or None (a TorchScript file)."""
    if model_cfg.get("name") == "timm":
        return model_cfg.get("arch")
    return model_cfg.get("_target_") or MODELS.get(model_cfg.get("name"))


def min_image_size(name: str, target: str | None = None) -> int:
    """The smallest image side the architecture takes (its `min_image_size` attribute; 1 where it has none)."""
    return int(getattr(architecture(name, target), "min_image_size", 1))


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs,
) -> NormalizedClassifier:
    """Build architecture `name` (or `_target_=` in kwargs) for the dataset's channels, classes and size, normalisation inside."""
    build = architecture(name, kwargs.pop("_target_", None))
    smallest = int(getattr(build, "min_image_size", 1))
    if image_size < smallest:
        raise ConfigError(
            f"dataset.image_size={image_size} is too small for model={name}; accepted: image_size >= {smallest}"
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"dataset.mean/std have {len(mean)}/{len(std)} values; accepted: one per channel ({in_channels})")
    if "image_size" in inspect.signature(build).parameters:
        kwargs.setdefault("image_size", image_size)
    net = build(in_channels=in_channels, num_classes=num_classes, **kwargs)
    return NormalizedClassifier(net, mean, std)
