"""Checkpoint files of every known layout, read safely (weights only, a pickled object's code never runs), and the model they load into."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classwise.errors import ConfigError, MissingInput

# Keys under which tools store a model's state dict: the authors' ckpt.pth ('net'), BackdoorBench
# and many training scripts ('model'), Lightning-like or hand-made ('state_dict', 'model_state_dict').
WRAPPER_KEYS = ("net", "model", "state_dict", "model_state_dict")
# Prefixes added by wrappers around the whole model: DataParallel / DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ACCEPTED = ("a Lightning .ckpt, a bare state dict, {'net' | 'model' | 'state_dict' | 'model_state_dict': state dict} "
            "(DataParallel 'module.' prefixes are removed), BackdoorBench's attack_result.pt, a .safetensors file, "
            "or a TorchScript file (model=torchscript)")

# The only non-torch types a checkpoint may hold: numpy arrays and scalars, plain data that
# BackdoorBench's attack_result.pt (poison indices) and many scripts (accuracies) store. Both the
# numpy 2 and the numpy 1 names, since files written under numpy 1 name `numpy.core`.
_np_core = np._core.multiarray
PLAIN_GLOBALS: list[Any] = [np.ndarray, np.dtype, _np_core._reconstruct, _np_core.scalar,
                            (_np_core._reconstruct, "numpy.core.multiarray._reconstruct"),
                            (_np_core.scalar, "numpy.core.multiarray.scalar")]
PLAIN_GLOBALS += [type(np.dtype(t)) for t in (np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16,
                                              np.float32, np.float64)]


@dataclass
class Checkpoint:
    """A checkpoint file read without running any of its code: its layout, weights (or TorchScript module), metadata."""

    path: Path
    layout: str  # lightning | state_dict | key:<name> | backdoorbench | safetensors | torchscript
    state: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None  # TorchScript only
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classwise(self) -> dict[str, Any]:
        """The model / dataset / setting / seed config classwise-train stores in its checkpoints ({} otherwise)."""
        return self.meta.get("classwise") or {}


def resolve_checkpoint(path: str | Path) -> Path:
    """A file as given, or a classwise run folder's checkpoints/last.ckpt."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise MissingInput(f"checkpoint={path}: no such file; accepted: a checkpoint file or a run folder with checkpoints/last.ckpt")
    return p


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Detect the layout of `path` and read it; a file holding pickled objects is refused before any of them is built."""
    path = resolve_checkpoint(path)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        return Checkpoint(path, "safetensors", state=load_file(str(path)))
    if _is_torchscript(path):
        # A TorchScript archive is code by design (compiled TorchScript, not Python pickles): the
        # user trusts it as they trust their own model. Loading it runs none of its methods.
        try:
            return Checkpoint(path, "torchscript", module=torch.jit.load(str(path), map_location="cpu"))
        except Exception as exc:  # noqa: BLE001 - a broken archive is one user error
            raise ConfigError(f"checkpoint={path} looks like TorchScript but cannot be loaded ({_first_line(exc)})") from exc
    return _layout(path, _load_weights_only(path))


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry code/ and constants.pkl; torch.save zips carry only data.pkl and tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _load_weights_only(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(PLAIN_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _pickled_globals(path, exc)
        raise ConfigError(
            f"checkpoint={path} holds pickled objects ({names}), not only weights: refused without running their code; "
            "accepted: tensors, numbers, strings and numpy arrays (re-save the weights alone, e.g. "
            "torch.save(model.state_dict(), 'weights.pt'), where you trust the file)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"checkpoint={path} cannot be read as a PyTorch checkpoint ({_first_line(exc)}); accepted: {ACCEPTED}") from exc


def _pickled_globals(path: Path, exc: Exception) -> str:
    """The classes / functions the pickle names that are not allowed, read without unpickling."""
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in PLAIN_GLOBALS}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if n not in allowed]
    except Exception:  # noqa: BLE001 - the legacy (non-zip) format: the error names the first one
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))[:1]
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _layout(path: Path, obj: Any) -> Checkpoint:
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint={path} holds a {type(obj).__name__}, not a dict of weights; accepted: {ACCEPTED}")
    if is_state_dict(obj):
        return Checkpoint(path, "state_dict", state=obj)
    if "pytorch-lightning_version" in obj and is_state_dict(obj.get("state_dict")):
        meta = {"classwise": obj["classwise"]} if isinstance(obj.get("classwise"), dict) else {}
        return Checkpoint(path, "lightning", state=obj["state_dict"], meta=meta)
    if "model_name" in obj and is_state_dict(obj.get("model")):
        # BackdoorBench's save_attack_result / save_defense_result: the model's state dict under
        # 'model', its architecture under 'model_name' (the name its generate_cls_model takes).
        meta = {"backdoorbench": {k: obj.get(k) for k in ("model_name", "num_classes", "img_size", "clean_data")}}
        return Checkpoint(path, "backdoorbench", state=obj["model"], meta=meta)
    for key in WRAPPER_KEYS:
        if is_state_dict(obj.get(key)):
            return Checkpoint(path, f"key:{key}", state=obj[key], meta={k: v for k, v in obj.items()
                                                                         if k != key and isinstance(v, int | float | str)})
    keys = ", ".join(repr(k) for k in list(obj)[:12]) + (", ..." if len(obj) > 12 else "")
    raise ConfigError(f"checkpoint={path} matches no known layout: its top-level keys are {keys}; accepted: {ACCEPTED}")


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def align_state(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` re-keyed for a model whose state dict is `expected` (keys and shapes must agree).

    Tries: wrapper prefixes (`module.`, `_orig_mod.`) removed; then also up to three levels of
    attributes removed, keeping only that attribute's keys (a LightningModule's `model.` / `net.`,
    classwise's own `model.net.` around a custom network). Returns the exact match, else the
    candidate sharing the most keys (the caller reports what differs).
    """
    shapes = {k: v.shape for k, v in expected.items()}
    expected = set(expected)
    level = [{_strip_wrappers(k): v for k, v in state.items()}]
    seen = list(level)
    for _ in range(4):
        for cand in level:
            if set(cand) == expected and all(v.shape == shapes[k] for k, v in cand.items()):
                return cand
        if len(seen) > 500:  # a deep tree of many attributes: stop looking, report the best
            break
        level = [{_strip_wrappers(k[len(head) + 1:]): v for k, v in cand.items() if k.startswith(head + ".")}
                 for cand in level for head in sorted({k.split(".", 1)[0] for k in cand if "." in k})]
        seen += level
    return max(seen, key=lambda c: (len(set(c) & expected), -len(set(c) ^ expected)))


def fits(net: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether `state`, aligned, has exactly `net`'s weights with their shapes."""
    expected = net.state_dict()
    aligned = align_state(state, expected)
    return set(aligned) == set(expected) and all(v.shape == expected[k].shape for k, v in aligned.items())


def load_weights(net: nn.Module, checkpoint: Checkpoint, what: str) -> None:
    """Load the checkpoint's weights into `net` (keys aligned), or fail with one line saying what differs."""
    expected = net.state_dict()
    state = align_state(checkpoint.state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{k!r} is {list(state[k].shape)} in the file, {list(expected[k].shape)} in the model")
        bb = checkpoint.meta.get("backdoorbench")
        hint = f" (BackdoorBench model_name={bb['model_name']}, {bb['num_classes']} classes)" if bb else ""
        raise ConfigError(f"checkpoint={checkpoint.path} ({checkpoint.layout}{hint}) does not fit {what}: {'; '.join(parts)}")
    net.load_state_dict(state)
