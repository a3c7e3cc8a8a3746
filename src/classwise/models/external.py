"""Any model as a [0, 1]-image classifier: the registry's, the user's own class by `_target_`, timm's, a TorchScript file."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from classwise.errors import ConfigError, import_extra
from classwise.models.convention import InputAdapter, InputConvention
from classwise.models.loading import Checkpoint, fits, load_weights

log = logging.getLogger(__name__)

EXTERNAL = ("custom", "timm", "torchscript")
# model.* keys that are ours; every other key of model=custom is a keyword argument of its class.
RESERVED = ("name", "input")


def build_external(model_cfg: dict[str, Any], dataset_cfg: dict[str, Any], checkpoint: Checkpoint | None = None) -> nn.Module:
    """model=custom | timm | torchscript, weights loaded from `checkpoint`, behind its declared input convention."""
    name = model_cfg["name"]
    declared = InputConvention.from_config(model_cfg.get("input"))
    if name == "torchscript":
        if checkpoint is None or checkpoint.layout != "torchscript":
            got = f"checkpoint={checkpoint.path} ({checkpoint.layout})" if checkpoint else "no checkpoint"
            raise ConfigError(f"model=torchscript needs checkpoint=<a TorchScript file (torch.jit.save)>; got {got}")
        net = checkpoint.module
    else:
        if checkpoint is not None and checkpoint.layout == "torchscript":
            raise _torchscript_needs_model(checkpoint)
        net = _custom(model_cfg) if name == "custom" else _timm(model_cfg, dataset_cfg, declared)
        if name == "timm" and model_cfg.get("pretrained") and declared.mean is None and checkpoint is None:
            declared = _timm_pretrained_convention(net, declared)
        if checkpoint is not None:
            load_weights(net, checkpoint, f"model={name} ({model_cfg.get('_target_') or model_cfg.get('arch')})")
    log.info("model=%s takes %s", name, declared.describe())
    return InputAdapter(net, declared, dataset_cfg["channels"], dataset_cfg["image_size"])


def _torchscript_needs_model(checkpoint: Checkpoint) -> ConfigError:
    return ConfigError(f"checkpoint={checkpoint.path} is a TorchScript file (its architecture is inside); accepted: "
                       "model=torchscript, with +model.input.* if it does not take [0,1] images")


def _custom(model_cfg: dict[str, Any]) -> nn.Module:
    """The user's class by Hydra's convention: `_target_` plus its keyword arguments."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    kwargs = {k: v for k, v in model_cfg.items() if k not in RESERVED}
    target = kwargs.get("_target_")
    if not target or target == "???":
        raise ConfigError("model._target_ is not set; accepted: model=custom model._target_=your_pkg.module.Class "
                          "(+model.<argument>=<value> for its keyword arguments)")
    try:
        net = instantiate(kwargs, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"model._target_={target} cannot be built ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}); accepted: an importable nn.Module "
                          "class (its package on PYTHONPATH), its keyword arguments as +model.<argument>=<value>") from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model._target_={target} built a {type(net).__name__}; accepted: a torch.nn.Module")
    return net


def check_timm_arch(arch: Any) -> Any:
    """timm, installed, and `arch` one of its architectures (checked in the CLI, before Hydra starts a job)."""
    timm = import_extra("timm", "model=timm", "timm", "timm")
    if not arch or not timm.is_model(arch):
        import difflib

        names = timm.list_models()
        close = difflib.get_close_matches(str(arch or ""), names, n=8) or timm.list_models(f"*{arch or ''}*")[:8] or names[:8]
        raise ConfigError(f"model.arch={arch!r} is not a timm model; accepted e.g.: {', '.join(close)}, ...")
    return timm


def _timm(model_cfg: dict[str, Any], dataset_cfg: dict[str, Any], declared: InputConvention) -> nn.Module:
    arch = model_cfg.get("arch")
    timm = check_timm_arch(arch)
    kwargs = {k: v for k, v in model_cfg.items() if k not in (*RESERVED, "arch", "pretrained")}
    try:
        return timm.create_model(arch, pretrained=bool(model_cfg.get("pretrained")), num_classes=dataset_cfg["num_classes"],
                                 in_chans=declared.channels or dataset_cfg["channels"], **kwargs)
    except OSError as exc:  # timm's download: no network, or no such weights on the hub
        raise ConfigError(f"model.arch={arch} model.pretrained=true: timm could not fetch its weights ({type(exc).__name__}); "
                          "accepted: network access (or the weights in the Hugging Face cache), or checkpoint=<a local "
                          "weights file>") from exc


def _timm_pretrained_convention(net: nn.Module, declared: InputConvention) -> InputConvention:
    """timm's downloaded weights declare their own normalisation (pretrained_cfg): use it, and say so."""
    data_cfg = import_extra("timm.data", "model=timm", "timm", "timm").resolve_model_data_config(net)
    conv = InputConvention(1.0, tuple(data_cfg["mean"]), tuple(data_cfg["std"]), declared.channels, declared.size)
    print(f"model=timm pretrained: input normalised as its weights declare (mean {list(conv.mean)}, std {list(conv.std)})")
    return conv


def build_classifier(model_cfg: dict[str, Any], dataset_cfg: dict[str, Any]) -> nn.Module:
    """A classifier from its `model` and `dataset` configs: a registry architecture, or custom / timm / torchscript."""
    from classwise.models import build_model

    if model_cfg["name"] in EXTERNAL:
        return build_external(model_cfg, dataset_cfg)
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "input")}
    return build_model(
        model_cfg["name"], in_channels=dataset_cfg["channels"], num_classes=dataset_cfg["num_classes"],
        image_size=dataset_cfg["image_size"], mean=dataset_cfg["mean"], std=dataset_cfg["std"], **kwargs,
    )


def load_model(model_cfg: dict[str, Any], dataset_cfg: dict[str, Any], checkpoint: Checkpoint | None) -> nn.Module:
    """The model an audit runs on: built from its config, weights from `checkpoint`, taking [0, 1] images."""
    if model_cfg["name"] in EXTERNAL:
        return build_external(model_cfg, dataset_cfg, checkpoint)
    model = build_classifier(model_cfg, dataset_cfg)
    if checkpoint is None:
        return model
    if checkpoint.layout == "torchscript":
        raise _torchscript_needs_model(checkpoint)
    what = f"model={model_cfg['name']} for dataset={dataset_cfg['name']}"
    if fits(model, checkpoint.state) or not fits(model.net, checkpoint.state):
        load_weights(model, checkpoint, what)  # classwise's own (normalisation layer included), or a one-line misfit
        return model
    # The bare architecture's weights from another tool: no normalisation layer inside, so the
    # input convention must be the one the model was trained with, declared by the user.
    if "input" not in model_cfg:
        raise ConfigError(f"checkpoint={checkpoint.path} holds {model_cfg['name']} weights without classwise's "
                          "normalisation layer; accepted: declare the input it was trained on, e.g. "
                          "+model.input.mean=[...] +model.input.std=[...] (+model.input.mean=null: none; "
                          "+model.input.range=255: [0,255] pixels)")
    load_weights(model.net, checkpoint, what)
    return InputAdapter(model.net, InputConvention.from_config(model_cfg["input"]), dataset_cfg["channels"],
                        dataset_cfg["image_size"])
