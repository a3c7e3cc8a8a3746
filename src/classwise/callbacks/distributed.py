"""Collectives for variable-sized results: object gather to rank 0 over torch.distributed."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_to_rank0(obj: Any, world_size: int) -> list[Any]:
    """Every rank's `obj` on rank 0 (others get []); a collective that every rank must call."""
    if not (dist.is_available() and dist.is_initialized()) or world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []
