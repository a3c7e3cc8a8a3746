"""The architectures classwise ships, by the name of their conf/model option, and the `_target_` that builds each."""

from __future__ import annotations

from typing import Any

MODELS: dict[str, str] = {
    "small_cnn": "classwise.models.small_cnn.SmallCNN",
    "resnet18": "classwise.models.resnet.ResNet18",
    "preact_resnet18": "classwise.models.resnet.PreActResNet18",
    "vgg16_bn": "classwise.models.vgg.VGG16BN",
    "resnet50": "classwise.models.factory.resnet50",
    "torchvision": "classwise.models.factory.torchvision_classifier",
}


def without_shipped_target(model: Any) -> Any:
    """A model config without the `_target_` its name already implies. Configs written before model options
    named one (results.json, checkpoints, references) built the shipped architecture of their `model.name`:
    both spellings are the same model."""
    if isinstance(model, dict) and "_target_" in model and model["_target_"] == MODELS.get(model.get("name")):
        return {k: v for k, v in model.items() if k != "_target_"}
    return model
