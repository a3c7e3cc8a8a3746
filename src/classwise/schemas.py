"""Every block that builds an object is checked against its target's own signature before anything runs.

A `_target_` block (trainer, trigger, setting.poisoner / adversary, detectors, callbacks, logger,
module.optimizer / scheduler, every model but timm's and TorchScript's) has as schema the
signature of what it builds: hydra-zen makes it a dataclass (`builds(..., populate_full_signature=True)`),
so an argument the target does not take, or a value OmegaConf cannot convert to its annotated type
(`trainer.max_epochs=abc`, `trigger.size=big`), is one line naming the key, the value and what is
accepted. One source of truth: a new argument of a trigger or detector is accepted as soon as it is
written, and Lightning's Trainer is checked against the Lightning that is installed.

`check_targets` runs on the config Hydra composed: in `config.check_composition` before Hydra's own run
(a sweep is refused once, not job by job) and in `config.validate` inside every job.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from classwise.errors import ConfigError

# Hydra's own keys of an instantiable block; not arguments of the target.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# model.* keys that are classwise's, not arguments of the architecture; and the arguments the registry
# passes itself (from the dataset).
MODEL_KEYS = ("name", "input", "_target_")
MODEL_PASSED = ("in_channels", "num_classes")


@dataclasses.dataclass(frozen=True)
class Signature:
    """What a target accepts: its arguments' names, whether it takes any other keyword, and their schema."""

    target: str
    names: tuple[str, ...]
    open: bool  # takes **kwargs: any key is passed on, and the target checks it
    schema: Any  # an OmegaConf structured node of the typed arguments

    def check(self, path: str, key: str, value: Any = None, name_only: bool = False) -> None:
        """One argument of this target: refused in one line if the target does not take it, or if `value` (not
        given: the name only) is of a type OmegaConf cannot convert to the argument's annotation."""
        if key not in self.names:
            if self.open:
                return
            close = difflib.get_close_matches(key, self.names, n=1)
            hint = f"did you mean {path}.{close[0]}? " if close else ""
            raise ConfigError(f"{path}.{key} is not an argument of {self.target}; {hint}accepted: "
                              f"{', '.join(self.names) or 'none'}")
        if name_only:
            return
        try:
            self.schema[key] = value
        except OmegaConfBaseException:
            kind = _type_name(self.schema, key)
            raise ConfigError(f"{path}.{key}={value!r} cannot be taken by {self.target}; accepted: {kind}") from None


def _type_name(schema: Any, key: str) -> str:
    node = schema._get_node(key)
    kind = getattr(node, "_metadata", None) and node._metadata.ref_type
    name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
    text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(name, name)
    return f"{text}, or null" if node._is_optional() and name in ("int", "float", "bool", "str") else text


# Targets whose **kwargs go on to another function (whose own arguments they accept), and the keys
# classwise reads itself from their block.
PASSES_KWARGS_TO = {"lightning.pytorch.loggers.WandbLogger": ("wandb.init", ("server_timeout",))}


@functools.cache
def signature(target: str | Callable[..., Any], drop: tuple[str, ...] = ()) -> Signature | None:
    """The schema of `target` (a dotted path or a callable); None where it cannot be imported or inspected here.

    A target that cannot be imported (a user's package not on this path) is left to the build, which
    says so in one line; `drop` are arguments the caller passes itself.
    """
    from classwise.locate import locate

    try:
        obj = locate(target) if isinstance(target, str) else target
        params = inspect.signature(obj).parameters
    except Exception:  # noqa: BLE001 - not importable or not inspectable: the build reports it
        return None
    name = target if isinstance(target, str) else f"{obj.__module__}.{obj.__qualname__}"
    names, typed = _arguments(obj, params, drop)
    is_open = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
    if is_open and name in PASSES_KWARGS_TO:
        onward, own = PASSES_KWARGS_TO[name]
        then = locate(onward)
        params = inspect.signature(then).parameters
        more, more_typed = _arguments(then, params, drop)
        names += tuple(n for n in (*more, *own) if n not in names)
        typed += [(n, t) for n, t in more_typed if n not in {k for k, _ in typed}]
        is_open = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
    schema = OmegaConf.structured(dataclasses.make_dataclass(
        "Schema", [(n, t, dataclasses.field(default=MISSING)) for n, t in typed]))
    OmegaConf.set_struct(schema, False)
    return Signature(name, names, is_open, schema)


def _arguments(obj: Any, params: Any, drop: tuple[str, ...]) -> tuple[tuple[str, ...], list[tuple[str, Any]]]:
    """The keyword arguments `obj` takes, and (name, type) of those whose annotation OmegaConf can type (hydra-zen).

    Where hydra-zen types an argument as Any because the signature's other hints do not resolve
    (`WandbLogger`'s forward reference to wandb's `Run`), the argument's own annotation is used when it is
    a plain one: `str`, `int`, `float`, `bool`, or one of them or None.
    """
    from hydra_zen import builds

    try:
        built = builds(obj, populate_full_signature=True)
    except Exception:  # noqa: BLE001 - a signature hydra-zen cannot type: names only, no types
        built = None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = tuple(p for p, v in params.items() if v.kind in kinds and p not in drop and p != "self")
    fields = {f.name for f in dataclasses.fields(built)} if built is not None else set()
    typed = [(f.name, _plain(params[f.name].annotation) if f.type is Any else f.type)
             for f in dataclasses.fields(built) if f.name in names] if built is not None else []
    return tuple(n for n in names if n in fields or built is None), typed


PLAIN = (str, int, float, bool)


def _plain(annotation: Any) -> Any:
    """`annotation` where it is a plain type OmegaConf checks (or one of them or None), else Any."""
    import types
    import typing

    if annotation in PLAIN:
        return annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return inner | None if inner in PLAIN else Any
    return Any


def check_targets(cfg: DictConfig, path: str = "") -> None:
    """Check every `_target_` block under `cfg` and a registry model against their targets' signatures.

    Values that cannot be resolved yet (Hydra's run folder outside a run) are skipped; nested blocks
    are checked where they are written, not where an interpolation (`trigger: ${trigger}`) points.
    """
    if path == "":
        _check_run_keys(cfg)
        _check_interpolations(cfg)
        _check_model(cfg)
    for key in cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg)):
        if isinstance(key, str) and (key == "hydra" or key in HYDRA_KEYS):
            continue
        if OmegaConf.is_interpolation(cfg, key):
            continue
        child = cfg._get_node(key)
        where = f"{path}.{key}" if path else str(key)
        if isinstance(child, DictConfig | ListConfig) and not child._is_none():
            if where != "model":  # the model block: its own rules (_check_model)
                check_targets(child, where)
    if isinstance(cfg, DictConfig) and path and path != "model" and "_target_" in cfg:
        _check_block(cfg, path, _resolved(cfg, "_target_"))
    if isinstance(cfg, DictConfig) and path:
        _check_schema_keys(cfg, path)


def _check_schema_keys(node: DictConfig, path: str) -> None:
    """A block with a dataclass schema (search, dataset, data, setting, module, paths, bench) holds only the schema's keys.

    Hydra's `+key=value` adds a key even to a structured config: `+search.foo=1` would pass silently.
    """
    kind = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(kind):
        return
    names = [f.name for f in dataclasses.fields(kind)]
    for key in node.keys():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {path}.{close[0]}? " if close else ""
            raise ConfigError(f"{path}.{key} is not a key of {path} ({kind.__name__}); {hint}accepted: {', '.join(names)}")


def _check_model(cfg: DictConfig) -> None:
    model = cfg.get("model") if isinstance(cfg, DictConfig) else None
    if not isinstance(model, DictConfig):
        return
    from classwise.models.shipped import MODELS

    name = model.get("name")
    if name in ("timm", "torchscript"):
        return  # their own keys, checked by timm or the file
    target = _resolved(model, "_target_") or MODELS.get(name)
    if isinstance(target, str):
        _check_block(model, "model", target, skip=MODEL_KEYS)


def _check_interpolations(cfg: DictConfig) -> None:
    """`trainer.max_epochs=${epochs}` where the config has no `epochs`, or `${nosuch:x}`: one line now, not
    Hydra's error when the block is built, naming the key whose own value refers to what is missing (not a key
    that refers to it in turn). What resolves only inside a run (`${hydra:runtime.output_dir}`) is left to the run."""
    from omegaconf.errors import InterpolationKeyError, UnsupportedInterpolationType

    failed = []

    def walk(node: DictConfig | ListConfig, path: str) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            if key == "hydra" and not path:
                continue
            where = f"{path}.{key}" if path else str(key)
            if OmegaConf.is_interpolation(node, key):
                try:
                    node[key]
                except (InterpolationKeyError, UnsupportedInterpolationType) as exc:
                    failed.append((where, str(node._get_node(key)._value()), str(exc).splitlines()[0]))
                except Exception:  # noqa: BLE001 - resolvable inside the run only (Hydra's resolver)
                    pass
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig) and not child._is_none():
                walk(child, where)

    walk(cfg, "")
    if failed:
        import re

        def missing(text: str) -> list[str]:  # the key or resolver the message names
            return [g for groups in re.findall(r"'([^']+)'|type (\S+)", text) for g in groups if g]

        named = [f for f in failed if any(m in f[1] for m in missing(f[2]))]
        where, raw, text = (named or failed)[0]
        raise ConfigError(f"{where}={raw!r}: {text}; accepted: an interpolation of a key the config has, or a value")


def _check_block(block: DictConfig, path: str, target: Any, skip: tuple[str, ...] = HYDRA_KEYS) -> None:
    if not isinstance(target, str) and not callable(target):
        return
    sig = signature(target, MODEL_PASSED if path == "model" else ())
    if sig is None:
        if isinstance(target, str) and path != "model":  # the model has its own message (models.factory)
            _check_importable(target, path)
        return
    for key in block.keys():
        if key in skip or key in HYDRA_KEYS:
            continue
        if OmegaConf.is_interpolation(block, key):
            # Checked where it is written (`T_max: ${trainer.max_epochs}` as trainer.max_epochs), and
            # `${hydra:runtime.output_dir}` raises outside a run or reads None where an earlier Hydra run in
            # this process left its state: the run itself fills it in. The name is still this target's.
            sig.check(path, str(key), name_only=True)
            continue
        if OmegaConf.is_missing(block, key):
            # `???`: no value to type yet; the build says it is missing
            sig.check(path, str(key), name_only=True)
            continue
        value = block[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            # an object built before the call: its own block is checked where it is written
            sig.check(path, str(key), name_only=True)
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=False)
        sig.check(path, str(key), value)


def _check_importable(target: str, path: str) -> None:
    """A `_target_` whose package imports but has no such object is a typo (`torch.optim.Adamm`): one line.
    A package that does not import here (a user's, installed only where the job runs) is left to the build."""
    from classwise.locate import locate

    try:
        locate(target)
    except AttributeError as exc:
        parent, _, leaf = target.rpartition(".")
        try:
            names = [n for n in dir(locate(parent)) if not n.startswith("_")]
        except Exception:  # noqa: BLE001 - the parent is missing too
            names = []
        close = difflib.get_close_matches(leaf, names, n=1)
        hint = f"; did you mean {path}._target_={parent}.{close[0]}?" if close else ""
        raise ConfigError(f"{path}._target_={target} does not exist ({exc}){hint}") from None
    except Exception:  # noqa: BLE001 - not importable here: the build reports it
        return


def _resolved(block: DictConfig, key: str) -> Any:
    try:
        return block[key]
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here
        return None


@dataclasses.dataclass
class PopulationConfig:
    """setting=population: which population (dev | test) and which of its members."""

    name: str = "dev"
    member: int = 0


@dataclasses.dataclass
class SettingConfig:
    """One option of conf/setting: its name, and the blocks that build its poisoner and adversary (checked
    against their targets by `check_targets`)."""

    name: str = MISSING
    poisoner: Any = None
    adversary: Any = None
    population: PopulationConfig | None = None


@dataclasses.dataclass
class RunKeys:
    """The top-level keys of conf/train.yaml and conf/search.yaml (each file has some of them)."""

    threat_model: str = "clean_data"
    task_name: str = "train"
    seed: int = 0
    resume: str | None = None
    robust_eval: bool = False
    reproducible: bool = False
    collective_timeout_min: float = 120  # minutes
    skip_finished: bool = False
    checkpoint: str | None = None
    patterns_from: str | None = None


@dataclasses.dataclass
class ModuleConfig:
    """`module:` in conf/train.yaml: the training layout, and the optimiser and scheduler blocks (partials,
    checked against their targets by `check_targets`)."""

    channels_last: bool = False
    optimizer: Any = MISSING
    scheduler: Any = None


@dataclasses.dataclass
class PathsConfig:
    """conf/paths: where data and outputs live."""

    root_dir: str = "."
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING  # Hydra's run folder


@dataclasses.dataclass
class BenchConfig:
    """`bench=population` (classwise-search): which trained population member the detectors run on, and the
    name of the folder their results go to."""

    population: str = "dev"
    member: int = 0
    name: str = "default"


def register_schemas() -> None:
    """The schemas in Hydra's ConfigStore that configs start from (their defaults lists): `setting/schema`
    (each conf/setting option), `paths/schema` (conf/paths), `module_schema` (the `module:` block) and
    `bench_schema` (conf/bench's `bench:` block)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="setting", name="schema", node=SettingConfig)
    store.store(group="paths", name="schema", node=PathsConfig)
    store.store(name="module_schema", node={"module": ModuleConfig})
    store.store(name="bench_schema", node={"bench": BenchConfig})


def _check_run_keys(cfg: DictConfig) -> None:
    """Types of the top-level keys (`seed=abc`), in one line."""
    schema = OmegaConf.structured(RunKeys)
    for f in dataclasses.fields(RunKeys):
        if f.name not in cfg:
            continue
        try:
            value = cfg[f.name]
        except Exception:  # noqa: BLE001 - not resolvable here
            continue
        try:
            schema[f.name] = value
        except OmegaConfBaseException:
            raise ConfigError(f"{f.name}={value!r}; accepted: {_type_name(schema, f.name)}") from None
