"""What a run prints while it works: live bars on a terminal, a line every N seconds in a log, no chatter.

Every bar of the package goes through `tqdm` below (a drop-in for `tqdm.auto.tqdm`). The mode comes
from the environment, so a cluster job script sets it once for train, search and every sweep job:

    CLASSWISE_PROGRESS=auto|bar|log|none   auto (default): `bar` on a terminal or in Jupyter, else `log`
    CLASSWISE_PROGRESS_INTERVAL=30         seconds between two `log` lines of one bar
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any

from tqdm.auto import tqdm as _live_tqdm
from tqdm.std import tqdm as _std_tqdm

from classwise.errors import ConfigError

MODES = ("auto", "bar", "log", "none")
DEFAULT_INTERVAL = 30.0


def progress_mode() -> str:
    """`bar`, `log` or `none`: CLASSWISE_PROGRESS, with `auto` resolved by whether stderr is a terminal."""
    mode = os.environ.get("CLASSWISE_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"CLASSWISE_PROGRESS={mode!r} is unknown; accepted: {', '.join(MODES)}")
    if mode == "auto":
        # A Jupyter kernel's stderr is no terminal, but tqdm.auto draws a live widget there.
        return "bar" if _isatty(sys.stderr) or "ipykernel" in sys.modules else "log"
    return mode


def progress_interval() -> float:
    """Seconds between two lines of one bar in `log` mode (CLASSWISE_PROGRESS_INTERVAL, default 30)."""
    raw = os.environ.get("CLASSWISE_PROGRESS_INTERVAL", str(DEFAULT_INTERVAL))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"CLASSWISE_PROGRESS_INTERVAL={raw!r} is not a number of seconds; accepted: a number >= 0")
    return value


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogBar(_std_tqdm):
    """tqdm's counting, rate and ETA, printed as whole lines: one every `interval` seconds and one at the end."""

    def __init__(self, *args: Any, interval: float | None = None, final_line: bool = True, **kwargs: Any):
        self._interval = progress_interval() if interval is None else interval
        self._last_line = time.monotonic()
        self._printed_n: float | None = None
        self._final_line = final_line
        kwargs.setdefault("file", sys.stderr)
        kwargs["mininterval"] = self._interval  # tqdm refreshes (calls display) no more often than this
        super().__init__(*args, **kwargs)

    def _line(self) -> str:
        d = self.format_dict
        if d["total"]:
            fmt = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        else:
            fmt = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        if not d["prefix"]:
            fmt = fmt.replace("{desc}: ", "")
        return self.format_meter(**{**d, "bar_format": fmt, "ncols": None})

    def print_line(self) -> None:
        """Print the bar's state now, as one line."""
        self._last_line, self._printed_n = time.monotonic(), self.n
        self.fp.write(self._line() + "\n")
        self.fp.flush()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # tqdm calls this at start, on refresh and while closing; a line is due only after work was done
        # and `interval` has passed, so a short bar prints one line (its last) and a long one a few.
        if self.n == 0 or self.n == self._printed_n:
            return True
        if time.monotonic() - self._last_line >= self._interval:
            self.print_line()
        return True

    def close(self) -> None:
        # Not tqdm's close: it would rewrite the bar and add a newline or a carriage return.
        if self.disable:
            return
        if self._final_line and self.n not in (0, self._printed_n):
            self.print_line()
        self.disable = True
        self._decr_instances(self)

    def clear(self, nolock: bool = False) -> None:
        pass  # lines are never redrawn, so there is nothing to clear before another write


def tqdm(*args: Any, **kwargs: Any):
    """A progress bar in the mode of `progress_mode()`; takes tqdm's arguments (`disable=` included)."""
    mode = progress_mode()
    if mode == "none":
        kwargs["disable"] = True
    if mode == "log":
        return LogBar(*args, **kwargs)
    return _live_tqdm(*args, **kwargs)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_TIPS = _NoTips()


def quiet_libraries() -> None:
    """Drop library output that tells a classwise user nothing (no flag turns these off).

    Lightning's advertisements for its cloud products, and a torch deprecation that Lightning's own
    code triggers (`LeafSpec`), printed on every run.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_TIPS)  # once: same object
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
