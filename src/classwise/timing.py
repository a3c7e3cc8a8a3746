"""Wall-clock seconds per phase of a run, for the `timing` block of results.json."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Seconds per named phase, summed over repeats: `with timer("search"): ...`.

    A dotted name nests in `as_block()`: "baselines.uap" becomes {"baselines": {"uap": s}}.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def merge_max(self, others: Iterable[dict[str, float]]) -> None:
        """Every rank's phases into this one, the slowest rank's seconds per phase."""
        for other in others:
            for name, s in other.items():
                self.seconds[name] = max(self.seconds.get(name, 0.0), s)

    def as_block(self) -> dict[str, float | dict[str, float]]:
        block: dict[str, float | dict[str, float]] = {}
        for name, s in self.seconds.items():
            head, _, tail = name.partition(".")
            if tail:
                block.setdefault(head, {})[tail] = round(s, 2)  # type: ignore[index]
            else:
                block[name] = round(s, 2)
        return block
