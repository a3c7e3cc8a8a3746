"""The package as a user installs it: a wheel in a fresh venv runs `classwise-train` from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def _run(args: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_wheel_installs_and_trains_from_an_empty_folder(tmp_path):
    # Build from a copy of what a release holds, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "conf", src / "conf", ignore=junk)
    shutil.copytree(REPO / "src", src / "src", symlinks=True, ignore=junk)  # keeps src/classwise/conf a link
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("classwise-*.whl")

    # A fresh venv that borrows this one's dependencies (a path line in a .pth) instead of reinstalling
    # torch; such a line adds the folder only, so the checkout's editable classwise there stays out.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "CLASSWISE_"))}
    env.update(WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    where = _run([python, "-c", "import classwise.config as c; print(c.__file__); print(c.conf_dir())"], cwd=empty, env=env)
    module_file, conf = where.stdout.split()
    assert module_file.startswith(site) and conf.startswith(site), where.stdout  # the wheel's code and configs

    _run([venv / "bin" / "classwise-train", "debug=fast", "search.eval_max_per_class=20"], cwd=empty, env=env)
    (results,) = empty.glob("outputs/train/runs/*/results.json")
    assert '"clean_acc"' in results.read_text() and '"classes"' in results.read_text()
