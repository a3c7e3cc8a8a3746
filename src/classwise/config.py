"""Checks on a composed config that run before any compute, and the CLI wrapper that reports them."""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from classwise.data.schema import register_schemas as register_data_schemas
from classwise.errors import ConfigError, MissingInput, RunFailed, import_extra, one_line
from classwise.launch import register_resolvers
from classwise.pipeline.settings import (
    check_moved_overrides,
    moved_key_error,
    parse_settings,
    register_schemas,
)
from classwise.reporting.runs import FAILED
from classwise.schemas import check_targets
from classwise.schemas import register_schemas as register_setting_schema

register_resolvers()  # hydra/default.yaml's run folder needs it before Hydra composes
register_schemas()  # conf/search starts from its schema in Hydra's ConfigStore
register_data_schemas()  # and conf/dataset, and the `data:` block
register_setting_schema()  # and conf/setting
# The configs inside the package: in a checkout a link to the top-level conf/ (where users read and
# edit them), in an installed wheel a copy of it (package data), so both find them the same way.
CONF_DIR = Path(__file__).parent / "conf"


def conf_dir() -> str:
    """The Hydra config folder: $CLASSWISE_CONF, else the configs that travel with the package."""
    return os.environ.get("CLASSWISE_CONF", str(CONF_DIR))


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{key} is required and was not given; set it on the command line ({key}=...)") from exc


def validate(cfg: DictConfig) -> None:
    """Fail with one line on settings that would only break later, after minutes of compute."""
    from classwise.data.sources import SOURCES
    from classwise.models.external import EXTERNAL
    from classwise.models.factory import MODELS, min_image_size

    name = _get(cfg, "dataset.name")
    if name not in SOURCES:
        raise ConfigError(f"dataset.name={name!r} is unknown; accepted: {', '.join(sorted(SOURCES))}")
    model = _get(cfg, "model.name")
    target = OmegaConf.select(cfg, "model._target_")
    if model not in MODELS and model not in EXTERNAL and not target:
        raise ConfigError(f"model.name={model!r} is unknown; accepted: {', '.join(sorted([*MODELS, *EXTERNAL]))}, "
                          "or a model config with a _target_ (conf/model/<yours>.yaml)")
    if model == "custom":
        _get(cfg, "model._target_")
    if model == "timm":
        from classwise.models.external import check_timm_arch

        check_timm_arch(_get(cfg, "model.arch"))
    check_targets(cfg)  # every block that builds an object, against its target's signature
    min_size = 1 if model in EXTERNAL else min_image_size(model, target)
    size = _get(cfg, "dataset.image_size")
    if not isinstance(size, int) or size < min_size:
        raise ConfigError(f"dataset.image_size={size} cannot be taken by model={model}; accepted: an integer >= {min_size}")
    if OmegaConf.select(cfg, "model.input") is not None:
        from classwise.models.convention import InputConvention

        InputConvention.from_config(OmegaConf.to_container(cfg.model.input, resolve=True))
    for key in ("dataset.channels", "dataset.num_classes", "data.batch_size", "data.eval_batch_size"):
        value = _get(cfg, key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{key}={value} must be a positive integer")
    lr = OmegaConf.select(cfg, "module.optimizer.lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0):
        raise ConfigError(f"module.optimizer.lr={lr!r}; accepted: a positive number")
    root = OmegaConf.select(cfg, "dataset.root")
    default_root = OmegaConf.select(cfg, "paths.data_dir")
    if root is not None and str(root) != str(default_root) and not Path(str(root)).expanduser().is_dir():
        raise ConfigError(f"dataset.root={root} does not exist; accepted: an existing folder (or leave it unset to use {default_root})")
    if "search" in cfg:
        parse_settings(cfg.search)  # ranges and names the schema's types cannot say
    if "trainer" in cfg:
        check_trainer_types(cfg.trainer)
    population = OmegaConf.select(cfg, "bench.population")
    if population is not None:
        from classwise.population import POPULATIONS

        if population not in POPULATIONS:
            raise ConfigError(f"bench.population={population!r} is unknown; accepted: {', '.join(POPULATIONS)}")
    if str(OmegaConf.select(cfg, "logger._target_", default="")).endswith("WandbLogger"):
        check_wandb(cfg.logger)
    if model not in EXTERNAL and not cfg.get("checkpoint") and not OmegaConf.select(cfg, "model.pretrained"):
        # An architecture classwise trains builds in milliseconds on the CPU (not pretrained weights: no download here):
        # `model.width=abc` fails here in one line.
        from classwise.models.external import build_classifier

        try:
            build_classifier(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.dataset, resolve=True))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to build it is the config's
            given = ", ".join(f"model.{k}={v!r}" for k, v in cfg.model.items() if k not in ("name", "_target_", "input"))
            raise ConfigError(f"model={model} cannot be built from {given or 'its config'}: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}") from None
    for part in ("poisoner", "adversary"):
        block = OmegaConf.select(cfg, f"setting.{part}")
        if block is None:
            continue
        if not isinstance(block, DictConfig) or "_target_" not in block:
            raise ConfigError(f"setting.{part} has nothing to build (no _target_) under setting={OmegaConf.select(cfg, 'setting.name')}; "
                              f"accepted: setting={' or setting='.join(_setting_options(part))} (which build one), or setting.{part}=null")
        # Cheap to build (a trigger's few tensors, an attack's settings): a wrong value in `trigger` or
        # `setting` fails here in one line, not in Hydra's traceback once the data is loaded.
        from hydra.utils import instantiate

        try:
            instantiate(block)
        except Exception as exc:  # noqa: BLE001 - any failure to build it is the config's
            cause = _config_error_in(exc)
            if cause is not None:
                raise cause from None
            trigger = OmegaConf.select(cfg, f"setting.{part}.trigger._target_")
            raise ConfigError(f"setting.{part}{f' (trigger={trigger})' if trigger else ''}: {one_line(exc)}") from None
    setting = OmegaConf.select(cfg, "setting.name")
    if "setting" in cfg and setting is None:
        raise ConfigError(f"setting.name is missing; accepted: {', '.join(_setting_options())}")
    if "detector" in cfg:
        # Detectors run after training and the search: a bad key or a threat model the data breaks
        # must not cost those minutes.
        from classwise.pipeline.detection_step import (
            build_detectors,
            check_threat_model_data,
            resolve_canvas_source,
        )

        detectors = build_detectors(OmegaConf.to_container(cfg.detector, resolve=True) if cfg.detector else {})
        threat_model = cfg.get("threat_model", "clean_data")
        source = resolve_canvas_source(OmegaConf.select(cfg, "search.canvas.source"), threat_model)
        poisoned = bool(OmegaConf.select(cfg, "setting.poisoner._target_"))  # classwise-search: checked on the checkpoint
        check_threat_model_data(detectors, threat_model, source, poisoned)


def group_options(group: str) -> list[str]:
    """The options of config group `group` (its conf/<group>/*.yaml); none where it is no group."""
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


def _setting_options(part: str | None = None) -> list[str]:
    """The options of conf/setting (those whose `part` block builds something, where given)."""
    folder = Path(conf_dir()) / "setting"
    return [name for name in group_options("setting") if part is None or f"{part}:\n" in (folder / f"{name}.yaml").read_text()]


# Lightning Trainer keys typed `int | float` (an int counts batches, a float a share of them): their
# signature's union is no type OmegaConf can check (classwise.schemas), so they are checked here.
TRAINER_NUMBERS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "overfit_batches", "val_check_interval", "gradient_clip_val")


def check_trainer_types(trainer: DictConfig) -> None:
    """`+trainer.limit_train_batches=abc`, `trainer.precision=17`, `trainer.accelerator=tpu2` refused in one line
    (Lightning would fail with a multi-line error once the job runs, or a traceback after setup)."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    def flat(kind: Any) -> list[Any]:
        args = typing.get_args(kind)
        return [v for a in args for v in flat(a)] if args else [kind]

    choices = {"accelerator": ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())],
               "strategy": ["auto", *StrategyRegistry.available_strategies()],
               "precision": [str(v) for v in flat(_PRECISION_INPUT)]}
    for key, accepted in choices.items():
        value = trainer.get(key)
        if value is not None and isinstance(value, str | int) and str(value) not in accepted:
            raise ConfigError(f"trainer.{key}={value!r} is unknown; accepted: {', '.join(dict.fromkeys(accepted))}")
    devices = trainer.get("devices")
    ok = (isinstance(devices, int) and not isinstance(devices, bool)) or (
        isinstance(devices, str) and (devices == "auto" or all(p.strip().lstrip("-").isdigit() for p in devices.split(",") if p.strip()))) or (
        isinstance(devices, ListConfig | list) and all(isinstance(d, int) and not isinstance(d, bool) for d in devices))
    if devices is not None and not ok:
        raise ConfigError(f"trainer.devices={devices!r}; accepted: a count, auto, -1 (all), or a list of device indices")
    for key in TRAINER_NUMBERS:
        value = OmegaConf.select(trainer, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"trainer.{key}={value!r}; accepted: an integer (batches) or a float (a share of them), or null")


WANDB_MODES = ("offline", "online", "disabled", "shared")  # wandb.init's `mode`


def check_wandb(logger: DictConfig) -> None:
    """The W&B values wandb itself would refuse only once the first metric is logged, after setup."""
    mode = logger.get("mode")
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={mode!r} is unknown; accepted: {', '.join(WANDB_MODES)}")
    timeout = logger.get("server_timeout")
    if "server_timeout" in logger and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"logger.server_timeout={timeout!r}; accepted: a positive number of seconds")


def refuse(message: object) -> NoReturn:
    """The CLIs' answer to bad input: `<command>: error: <message>` on stderr, exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


# Hydra's launchers are plugins of an extra: without it Hydra would list the launchers it has, not
# say what to install.
_SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
                    "submitit_slurm": _SUBMITIT, "submitit_local": _SUBMITIT}


def check_group_choices(argv: list[str]) -> None:
    """Refuse `group=option` on the command line when conf/<group> has no such option (one line, exit 2).

    Hydra finds this too, but only after printing a multi-line message with its search path and
    exiting 1. Skipped where the user adds config folders of their own (--config-dir, -cd,
    hydra.searchpath), whose options this cannot see; sweeps (`a,b`) have each option checked.
    """
    flags, overrides = split_command_line(argv)
    try:
        check_moved_overrides(overrides)
    except ConfigError as exc:
        refuse(exc)
    for arg in overrides:
        if arg.lstrip("+~").partition("=")[0] != "hydra/launcher":
            continue
        for value in (v for v in _option_names(arg) if v in LAUNCHER_PLUGINS):
            module, package = LAUNCHER_PLUGINS[value]
            try:
                import_extra(module, f"hydra/launcher={value}", package, "launchers")
            except ConfigError as exc:
                refuse(exc)
    if any(f in flags for f in OWN_CONFIG_FLAGS) or any(a.startswith("hydra.searchpath") for a in overrides):
        return
    root = Path(conf_dir())
    for arg in overrides:
        key, eq, value = arg.lstrip("+~").partition("=")
        group = root / key
        if not eq or not key or key.startswith(("hydra", "-")) or not group.is_dir():
            continue
        options = group_options(key)
        for v in _option_names(arg):
            if v not in options:
                refuse(f"{key}={v} is unknown; accepted: {', '.join(options)}")


def _option_names(override: str) -> list[str]:
    """The option names a `group=...` override chooses, as Hydra's parser reads them: quoted (`model='a'`), a list
    (`detector=[a,b]`), a sweep of either (`detector=[a,b],c`, `model=sort(a,b)`); none where Hydra expands them
    itself (`glob(*)`) or where they are interpolations."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
        values = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
    except Exception:  # noqa: BLE001 - what Hydra's parser cannot read here, it reports when it composes
        return []
    names = [getattr(n, "text", n) for v in values for n in (v if isinstance(v, list) else [v])]  # QuotedString: its text
    return [str(n) for n in names if n is not None and not (isinstance(n, str) and "${" in n)]


# Hydra's command-line flags that take a value as the next word (`--cfg job`, `-cn search`).
_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun")
OWN_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp")  # configs of a folder these checks cannot see
PRINT_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")  # print, run nothing
_INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def split_command_line(argv: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Hydra's flags (with their values) and the overrides of a command line, as Hydra's parser reads them."""
    flags: dict[str, str | None] = {}
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        word, i = argv[i], i + 1
        if not word.startswith("-"):
            overrides.append(word)
            continue
        name, eq, value = word.partition("=")
        if not eq and i < len(argv) and (name in _FLAGS_WITH_VALUE or (name in ("--info", "-i") and argv[i] in _INFO_TOPICS)):
            value, i = argv[i], i + 1
        flags[name] = value or None
    return flags, overrides


def check_composition(config_name: str, argv: list[str]) -> None:
    """Compose the config as Hydra will and refuse, in one line, an override, schema or value it breaks.

    A wrong key or type (`search.foo=1`, `search.steps=abc`, `hydra.job.chdir=maybe`, an experiment's YAML
    against the `search` schema) fails when Hydra composes, with a message of several lines and exit 1; a
    wrong value (`search.canvas.strategy=best`) only inside the job, after Hydra started it. This composes
    first, runs `validate` on the result and says what is wrong in one line (exit 2). A sweep is checked
    with each of its values: an option of a group (`model=a,b`) composed again, a value (`seed=0,1,abc`,
    `range(0,72)`) set on the composed config and validated; the other keys at their first value.
    """
    flags, overrides = split_command_line(argv)
    if any(f in flags for f in OWN_CONFIG_FLAGS):
        return  # configs of the user's own folder: Hydra composes and reports
    config_name = flags.get("--config-name") or flags.get("-cn") or config_name
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if GlobalHydra.instance().is_initialized():
        return  # inside a Hydra app (tests composing in-process): Hydra composes and reports
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's parser errors are of several types
        refuse(one_line(exc))
    firsts, variants = [], []
    for arg, override in zip(overrides, parsed, strict=True):
        if not override.is_sweep_override():
            firsts.append(arg)
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - a sweep Hydra cannot expand here (e.g. glob): Hydra checks it
            continue
        key = arg.partition("=")[0]
        firsts.append(f"{key}={values[0]}")
        variants += [(len(firsts) - 1, f"{key}={v}") for v in values[1:]]
    values = not any(f in flags for f in PRINT_FLAGS)  # a config printed, not run: its keys and types only
    base = _checked(config_name, firsts, values)
    for i, variant in variants:
        if _is_group(variant):
            _checked(config_name, [*firsts[:i], variant, *firsts[i + 1:]], values)
        elif values:
            _checked_value(base, variant)


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _is_group(override: str) -> bool:
    """`model=resnet18`, `hydra/launcher=joblib`, `+experiment=x`: an option of a config group, not a value."""
    key = override.lstrip("+~").partition("=")[0].split("@")[0]
    return "/" in key or ("." not in key and (key == "hydra" or (Path(conf_dir()) / key).is_dir()))


def _checked(config_name: str, overrides: list[str], values: bool = True) -> DictConfig:
    """The composed config of `overrides`, its added keys and (`values`) its values checked; refused in one line if not."""
    try:
        cfg = _compose(config_name, overrides)
    except Exception as exc:  # noqa: BLE001 - composition raises Hydra's and OmegaConf's errors
        refuse(_composition_error(exc, config_name, overrides))
    _check_added_keys(cfg, config_name, overrides)
    if values:
        _validated(cfg)
    else:
        try:
            check_targets(cfg)
        except ConfigError as exc:
            refuse(exc)
    return cfg


def _checked_value(base: DictConfig, override: str) -> None:
    """One value of a sweep, set on the config composed with the first (as Hydra sets it) and validated."""
    import contextlib
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    parsed = OverridesParser.create().parse_overrides([override])[0]
    cfg = copy.deepcopy(base)
    try:
        with open_dict(cfg) if parsed.is_add() or parsed.is_force_add() else contextlib.nullcontext():
            OmegaConf.update(cfg, parsed.key_or_group, parsed.value(), merge=True)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's validation errors are of several types
        refuse(f"Error merging override {override}: {one_line(exc)}")
    _validated(cfg)


def _validated(cfg: DictConfig) -> None:
    try:
        validate(cfg)
    except MissingInput:
        pass  # one job's input (a checkpoint): that job records it and a sweep's others run
    except ConfigError as exc:
        refuse(exc)
    except Exception:  # noqa: BLE001 - what cannot be checked outside the job is checked, and reported, in it
        pass


def _check_added_keys(cfg: DictConfig, config_name: str, overrides: list[str]) -> None:
    """`+foo=1` adds a top-level key Hydra accepts and nothing reads (no interpolation names it): refused, as a typo
    would be."""
    added = [o for o in overrides if o.startswith("+") and not _is_group(o)]
    tops = {o.lstrip("+").partition("=")[0].split(".")[0]: o for o in added}
    if not tops:
        return
    plain_cfg = _compose(config_name, [o for o in overrides if o not in added])
    raw = OmegaConf.to_yaml(cfg) + " ".join(overrides)  # interpolations, unresolved
    for top, override in tops.items():
        if top in plain_cfg or f"${{{top}" in raw:  # there, or read by an interpolation (`logger.name=${tag}`)
            continue
        names = sorted(k for k in plain_cfg.keys() if k != "hydra")
        options = group_options(top)
        first = f"; or {top}=<option> first ({', '.join(options)})" if options else ""
        close = difflib.get_close_matches(top, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        refuse(f"{override} adds {top}, which classwise-{config_name}'s config does not have; {hint}accepted: "
               f"{', '.join(names)}{first}")


def _composition_error(exc: BaseException, config_name: str, overrides: list[str]) -> str:
    """Hydra's composition error in one line, with what is accepted where Hydra's message does not say it."""
    import re

    text, key = one_line(exc), _full_key(exc)
    if "does not support deletion" in text:
        return f"~{key}: a key of a schema's block cannot be deleted; accepted: {key}=null"
    moved = moved_key_error(key.split(".", 1)[1], None) if key.startswith("search.") and key.count(".") == 1 else None
    if moved:
        return str(moved)
    options = getattr(exc, "options", None)  # MissingConfigException: the options its group has
    if options:
        return f"{text}; accepted: {', '.join(sorted(options))}"
    deleted = re.search(r"Could not delete from config. '([^']+)' does not exist", text)
    group = re.search(r"Could not override '([^']+)'\. No match in the defaults list", text)
    if not key and (deleted or group):
        key = (deleted or group).group(1)
    if not key:  # an error that names no key (`Unexpected type for root: NoneType`): find the override behind it
        for override in overrides:
            try:
                plain_cfg = _compose(config_name, [o for o in overrides if o != override])
            except Exception:  # noqa: BLE001 - not this one
                continue
            path = override.lstrip("+~").partition("=")[0]
            parent = path.rpartition(".")[0]
            if parent and OmegaConf.select(plain_cfg, parent) is None and "/" not in path:
                top = path.split(".")[0]
                options = group_options(top)
                fills = f"; accepted: the option of {top} that fills it ({', '.join(options)})" if options else ""
                return f"{override}: {parent} is null in this config, so it has no {path.rpartition('.')[2]}{fills}"
            return f"{override}: {text}"
        return text
    others = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    try:
        plain_cfg = _compose(config_name, others)
    except Exception:  # noqa: BLE001 - another override fails too: Hydra's message as it is
        return text
    if deleted:
        path = deleted.group(1)
        parent, _, leaf = path.rpartition(".")
        node = OmegaConf.select(plain_cfg, parent) if parent else plain_cfg
        if isinstance(node, DictConfig) and leaf in node:  # there, at null: Hydra deletes only a key with a value
            return f"~{path}: {path} is null already; accepted: leave it out, or {path}=null"
        return text
    if group:
        groups = sorted(k for k in plain_cfg.hydra.runtime.choices.keys() if not k.startswith("hydra"))
        return f"{group.group(1)}= is not a group of classwise-{config_name}'s config; accepted: {', '.join(groups)}"
    if key and ("is not in struct" in text or re.search(r"Key '[^']+' not in '", text)):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(plain_cfg, parent) if parent else plain_cfg
        if isinstance(node, DictConfig):
            names = [str(k) for k in node.keys() if k not in ("hydra", "_target_")]
            if "_target_" in node:
                from classwise.schemas import signature

                sig = signature(str(OmegaConf.select(node, "_target_")))
                names += [n for n in (sig.names if sig else ()) if n not in names]
            if leaf in names:  # an argument of the target that this block does not set: Hydra adds it with +
                value = next((o.partition("=")[2] for o in overrides if o.lstrip("+~").partition("=")[0] == key), "...")
                return f"{key} is not set in this config, and Hydra changes only a key that is; accepted: +{key}={value}"
            close = difflib.get_close_matches(leaf, names, n=1)
            hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
            return f"{text}; {hint}accepted: {', '.join(names) or 'no key here'}"
        return text
    return text


def _full_key(exc: BaseException | None) -> str:
    """The `full_key` an OmegaConf error behind `exc` names ("" if none)."""
    for _ in range(4):
        if exc is None:
            break
        key = getattr(exc, "full_key", None)
        if key:
            return str(key)
        exc = exc.__cause__ or exc.__context__
    return ""


def command_line(config_name: str, hydra_main: Callable[[], None]) -> None:
    """A console script: refuse a bad command line in one line (exit 2) before Hydra runs `hydra_main`."""
    check_group_choices(sys.argv[1:])
    check_composition(config_name, sys.argv[1:])
    hydra_main()


def cli_errors(fn):
    """A Hydra job of a console script: a ConfigError is one line on stderr and exit status 2, with no traceback;
    another error in a sweep job is recorded in its folder (FAILED) and the sweep goes on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from classwise.progress import quiet_libraries

        quiet_libraries()  # in the job, not at import: a joblib or SLURM job is a process of its own
        try:
            result = fn(*args, **kwargs)
            if _in_multirun():
                _output_dir().joinpath(FAILED).unlink(missing_ok=True)  # an earlier failure of this job, now fixed
            return result
        except Exception as exc:
            cause = _config_error_in(exc)
            if (cause is None or isinstance(cause, MissingInput)) and _in_multirun():
                # One failed job must not lose the others: record it in the job folder and go on.
                import logging
                import traceback

                logging.getLogger(fn.__module__).error("job failed: %r", exc)
                try:
                    # First line: the error in one line (what classwise-report lists); then the traceback.
                    summary = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
                    _output_dir().joinpath(FAILED).write_text(f"{summary}\n\n{traceback.format_exc()}")
                except Exception:  # noqa: BLE001 - recording the failure must not fail the sweep
                    pass
                return None  # FailedJobs makes the whole multirun exit non-zero at its end
            if isinstance(exc, RunFailed):
                print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
                sys.exit(1)
            if cause is None:
                raise
            refuse(cause)

    return wrapper


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency; keeps config.py importable without it
    _HydraCallback = object


class FailedJobs(_HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): a multirun with a failed job exits with status 1.

    `cli_errors` lets the other jobs of a sweep run and leaves a FAILED file in the failed job's
    folder; at the end of the multirun (in the launching process, whatever the launcher) this lists
    the FAILED files written since the multirun started and exits non-zero if there are any.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import time

        self.started = time.time() - 1.0  # file times may be coarser than the clock

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        started = getattr(self, "started", 0.0)
        failed = sorted(p.parent for p in sweep.rglob(FAILED) if p.stat().st_mtime >= started)
        if failed:
            print(f"{len(failed)} job(s) of this multirun failed (traceback in each folder's {FAILED}):", file=sys.stderr)
            for folder in failed:
                print(f"  {folder}", file=sys.stderr)
            sys.exit(1)


def _config_error_in(exc: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `exc`, also when Hydra's instantiate wrapped it."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ConfigError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra
        return False
