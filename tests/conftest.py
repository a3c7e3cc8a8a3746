"""Shared test helpers: run the real CLIs in a subprocess, compose the real configs, a planted-patch model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# `make test` runs the suite in two pytest-xdist workers (one per core here): each worker, and every
# command line it starts, then computes on one thread, so the two never fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def run_cli(module: str, *overrides: str, root: Path, run_dir: Path | None = None, timeout: int = 600,
            check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m classwise.<module> overrides...` with outputs under `root` and W&B disabled."""
    env = {**os.environ, "CLASSWISE_ROOT": str(root), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}
    args = [sys.executable, "-m", f"classwise.{module}", *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_cli_in_process(module: str, *overrides: str, root: Path, run_dir: Path | None = None) -> subprocess.CompletedProcess:
    """`classwise.<module>.main()` in this process, for input the CLI must refuse before any compute.

    Same entry point, Hydra composition, checks and one-line error as `run_cli`, without the few
    seconds of a new interpreter importing torch and Lightning; returns what `run_cli(check=False)`
    returns. `tests/test_cli.py` keeps a subprocess case, so the installed wiring stays tested.
    """
    import contextlib
    import importlib
    import io

    entry = importlib.import_module(f"classwise.{module}")
    argv = [f"classwise-{module}", *overrides, *([f"hydra.run.dir={run_dir}"] if run_dir is not None else [])]
    saved_env = {k: os.environ.get(k) for k in ("CLASSWISE_ROOT", "WANDB_MODE")}
    saved_argv, out, err, code = sys.argv, io.StringIO(), io.StringIO(), 0
    os.environ.update(CLASSWISE_ROOT=str(root), WANDB_MODE="disabled")
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def on_two_ranks(target, *args, timeout: float = 240) -> list[int | None]:
    """`target(rank, *args)` in two fresh (spawned) processes, one per rank; their exit codes.

    A process still running after `timeout` seconds (a deadlock) is killed: its code is then negative.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, *args)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def cli(tmp_path):
    def _run(module: str, *overrides: str, run_dir: str | Path | None = "run", **kw):
        rd = tmp_path / run_dir if run_dir is not None else None
        return run_cli(module, *overrides, root=tmp_path, run_dir=rd, **kw)

    return _run


@pytest.fixture
def refused(tmp_path):
    """Run a command line that must be refused before compute, in this process (`run_cli_in_process`)."""
    def _run(module: str, *overrides: str, run_dir: str | Path | None = "run"):
        rd = tmp_path / run_dir if run_dir is not None else None
        return run_cli_in_process(module, *overrides, root=tmp_path, run_dir=rd)

    return _run


class PlantedPatchModel(nn.Module):
    """Answers `target` exactly when a white patch sits at (top, left); a fixed linear map otherwise.

    The ground truth for the search: the only pixels that can make any image class `target` are the
    patch's, so a correct search must put its top-k pixels there.
    """

    def __init__(self, channels: int, size: int, num_classes: int, target: int, top: int, left: int, patch: int,
                 seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(channels * size * size, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(num_classes, channels * size * size, generator=g) * 0.05)
            self.linear.bias.zero_()
        self.target, self.top, self.left, self.patch = target, top, left, patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x.flatten(1))
        region = x[:, :, self.top : self.top + self.patch, self.left : self.left + self.patch].mean((1, 2, 3))
        bonus = torch.zeros_like(logits)
        bonus[:, self.target] = 60 * (region - 0.85)
        return logits + bonus


def stamp(images: torch.Tensor, top: int, left: int, patch: int) -> torch.Tensor:
    out = images.clone()
    out[:, :, top : top + patch, left : left + patch] = 1.0
    return out


class TinyNet(nn.Module):
    """An architecture of the user's own, as classwise trains one: `in_channels` and `num_classes` from the dataset."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
