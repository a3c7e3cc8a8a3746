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


def with_model_target(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config with its model's `_target_` spelled out: configs written before model options named one
    (results.json, checkpoints) built the shipped architecture of their `model.name`, the same run as now."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or "_target_" in model or model.get("name") not in MODELS:
        return config
    return {**config, "model": {"name": model["name"], "_target_": MODELS[model["name"]],
                                **{k: v for k, v in model.items() if k != "name"}}}
