"""Checkpoints written atomically beside their target, and a rerun's answer to one that cannot be read."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from classwise.errors import ConfigError, RunFailed

UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with the file staged in its own folder, fsynced, then `os.replace`d.

    Lightning stages in $TMPDIR and moves the file over; across filesystems (node-local /tmp, shared
    run folder) that move is a copy, and an interrupted one leaves a truncated last.ckpt that every
    rerun then fails to read. A rename inside one folder is atomic: the target is the old file or
    the new one, never a part. A failed write is one line naming the path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RunFailed(f"could not write the checkpoint {path}: {exc.strerror or exc}; "
                            f"accepted: room and write access in {path.parent} (the previous checkpoint is kept)") from None


def _fsync_folder(folder: Path) -> None:
    """The rename itself reaches the disk (POSIX); a folder that cannot be opened (Windows) is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resume_meta(path: str, explicit: bool) -> dict[str, Any] | None:
    """The `classwise` block of the checkpoint to resume from; None when an auto-found one is unreadable.

    An unreadable checkpoint that the run folder offered by itself (an interrupted write of an older
    version) is moved aside and the run starts over, saying so in one line; one the user named with
    `resume=` is refused in one line.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("classwise") or {}
    except UNREADABLE as exc:
        if explicit:
            raise ConfigError(f"resume={path} is not a readable checkpoint ({type(exc).__name__}); "
                              "accepted: a complete .ckpt file or a run folder holding one") from None
        aside = Path(path).with_name(Path(path).name + ".unreadable")
        os.replace(path, aside)
        print(f"{path} is unreadable (an interrupted write?): moved to {aside.name}; training starts from scratch")
        return None
