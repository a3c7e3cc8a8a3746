"""The ranks of a run seen from one of them: gather to rank 0, share rank 0's decision, fail together.

Every collective here runs over a CPU (gloo) group: results are canvases, masks and scores of up to
1,000 classes, and pickled through an NCCL group they would be staged on rank 0's GPU as
world x largest bytes. A run on gloo already (CPU) uses its default group.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from classwise.errors import RankFailed

log = logging.getLogger(__name__)


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


class Ranks:
    """Collectives that every rank of the run must call, in the same order; trivial on one process."""

    def __init__(self, world_size: int, timeout: timedelta | None = None):
        self.world_size = world_size
        self.group = None
        if _distributed(world_size) and dist.get_backend() != "gloo":
            # new_group is itself a collective: created here, when every rank builds its Ranks.
            self.group = dist.new_group(backend="gloo", timeout=timeout)
        self.rank = dist.get_rank() if _distributed(world_size) else 0

    @classmethod
    def of(cls, strategy: Any, world_size: int) -> Ranks:
        """The ranks of a Lightning Trainer's or Fabric's strategy, under its collective timeout."""
        return cls(world_size, getattr(strategy, "_timeout", None))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` on rank 0 (others get [])."""
        if not _distributed(self.world_size):
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out or []

    def from_rank0(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank: a decision taken once, on what rank 0's filesystem shows."""
        if not _distributed(self.world_size):
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def decide(self, stage: str, decide: Callable[[], Any]) -> Any:
        """`decide()` run on rank 0 alone, its value on every rank; when it raises, every rank raises.

        For what each rank could read from its own filesystem (a finished folder, a checkpoint): without
        shared storage, or with a lagging one, ranks that look for themselves can take different branches
        and wait on each other for ever.
        """
        value = None
        with self.together(stage):
            if self.rank == 0:
                value = decide()
        return self.from_rank0(value)

    def together(self, stage: str) -> _Together:
        """`with ranks.together(stage):` every rank leaves the block together; when one raised, all raise."""
        return _Together(self, stage)


class _Together:
    """Leaves a stage with an exchange of one line per rank, so no rank waits on a failed one.

    Without it a rank that raised leaves the others in their next collective until the collective
    timeout (two hours by default). The failing rank's traceback goes to the log at debug level.
    """

    def __init__(self, ranks: Ranks, stage: str):
        self.ranks, self.stage = ranks, stage

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if not _distributed(self.ranks.world_size) or isinstance(exc, RankFailed):
            return False  # one process: the error as it is; RankFailed: every rank raised it already
        line = None
        if exc is not None:
            if not isinstance(exc, Exception):
                return False  # KeyboardInterrupt, SystemExit: the launcher ends every process
            line = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            log.debug("rank %d failed in %s:\n%s", self.ranks.rank, self.stage,
                      "".join(traceback.format_exception(kind, exc, tb)))
        lines: list[str | None] = [None] * self.ranks.world_size
        dist.all_gather_object(lines, line, group=self.ranks.group)
        failed = [(rank, text) for rank, text in enumerate(lines) if text is not None]
        if not failed:
            return False
        rank, text = failed[0]
        raise RankFailed(f"rank {rank} failed in {self.stage}: {text}") from exc
