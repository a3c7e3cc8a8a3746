"""The package as a user installs it: declared ranges, a wheel beside another torch, `classwise-train` from an empty folder."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from classwise.errors import ConfigError
from tests.conftest import REPO

# The torches this release is installed beside in the tests: the tested pin and an older supported one.
SUPPORTED = {"torch": ["2.13.0", "2.14.1"], "torchvision": ["0.28.0", "0.29.1"]}


def _run(args: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy of what a release holds, so the checkout gets no build/ or egg-info.
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "conf", src / "conf", ignore=junk)
    shutil.copytree(REPO / "src", src / "src", symlinks=True, ignore=junk)  # keeps src/classwise/conf a link
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src])
    (built,) = (tmp_path / "dist").glob("classwise-*.whl")
    return built


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(z.read(name).decode())


def _requirements(wheel: Path) -> dict[str, tuple[Requirement, str | None]]:
    """Declared distribution -> (requirement, the extra it belongs to; None for the core)."""
    out = {}
    for line in _metadata(wheel).get_all("Requires-Dist"):
        req = Requirement(line)
        extra = next((e for e in ("launchers", "timm", "docs", "dev") if req.marker and req.marker.evaluate({"extra": e})), None)
        if canonicalize_name(req.name) != "classwise":
            out[canonicalize_name(req.name)] = (req, extra)
    return out


def test_wheel_declares_ranges_and_the_pythons_torch_covers(wheel):
    meta = _metadata(wheel)
    pythons = Requirement(f"python{meta['Requires-Python']}").specifier
    assert all(v in pythons for v in ("3.11.0", "3.12.0", "3.13.0")), meta["Requires-Python"]
    reqs = _requirements(wheel)
    for name, versions in SUPPORTED.items():
        req, extra = reqs[name]
        assert extra is None and "==" not in str(req.specifier), req  # a range, so a user's own torch stays
        assert all(v in req.specifier for v in versions), (req, versions)
    for req, _ in reqs.values():  # every library range has a floor and a ceiling
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops and ("<" in ops or canonicalize_name(req.name) == "setuptools"), req


def test_constraints_pin_every_declared_requirement_inside_its_range(wheel):
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.partition(" #")[0].strip()
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    for name, (req, _) in _requirements(wheel).items():
        assert name in pins, f"{name} is declared but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {name}=={pins[name]} outside {req}"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names of the modules a file imports: (at module level, anywhere)."""
    tree = ast.parse(path.read_text())
    anywhere, top = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = {node.module.split(".")[0]}
        else:
            continue
        anywhere |= names
        if node in tree.body:
            top |= names
    return top, anywhere


def test_every_imported_package_is_declared_and_extras_are_imported_lazily(wheel):
    declared = _requirements(wheel)
    owners = packages_distributions()
    for path in (REPO / "src" / "classwise").rglob("*.py"):
        top, anywhere = _imports(path)
        for module in anywhere - set(sys.stdlib_module_names) - {"classwise", "__future__"}:
            dists = {canonicalize_name(d) for d in owners.get(module, [])}
            found = dists & set(declared)
            assert found, f"{path.name} imports {module} ({', '.join(dists) or 'not installed'}), which pyproject.toml does not declare"
            if module in top:  # a module-level import must not need an extra
                assert any(declared[d][1] is None for d in found), f"{path.name} imports {module} of an extra at module level"


def test_a_missing_extra_is_named_in_one_line(monkeypatch, capsys):
    from classwise import config
    from classwise.models.external import build_classifier

    monkeypatch.setitem(sys.modules, "timm", None)  # as if `classwise[timm]` was not installed
    with pytest.raises(ConfigError, match=r"^model=timm needs timm, which is not installed; accepted: pip install 'classwise\[timm\]'"):
        build_classifier({"name": "timm", "arch": "resnet18"}, {"num_classes": 10, "channels": 3, "image_size": 32})
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_joblib_launcher", None)
    with pytest.raises(SystemExit) as exit_:
        config.check_group_choices(["hydra/launcher=joblib", "debug=fast"])
    assert exit_.value.code == 2
    assert "hydra/launcher=joblib needs hydra-joblib-launcher, which is not installed; accepted: pip install 'classwise[launchers]'" in capsys.readouterr().err


def _fake_dist(site: Path, name: str, version: str, requires: list[str] = ()) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text("\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                                                    *(f"Requires-Dist: {r}" for r in requires)]) + "\n")
    info.joinpath("RECORD").write_text("")


@pytest.mark.parametrize("torch_version, vision_version, keeps", [("2.13.0", "0.28.0", True), ("2.5.1", "0.20.1", False)])
def test_the_wheel_resolves_beside_a_users_torch(wheel, tmp_path, torch_version, vision_version, keeps):
    """pip, offline, in a venv holding another torch: a supported one stays, an unsupported one is not accepted."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The user's torch (its metadata is what pip resolves against) in front of this venv's other libraries.
    _fake_dist(site, "torch", torch_version)
    _fake_dist(site, "torchvision", vision_version, [f"torch=={torch_version}"])
    site.joinpath("borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # No pip config (its index and constraints), and no PYTHONPATH: a source tree there is no installed torch.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH"))} | {"PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--dry-run", "--no-index", wheel],
                          capture_output=True, text=True, timeout=300, env=env)
    if keeps:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(rf"Requirement already satisfied: torch\S* in {re.escape(str(site))} .*\({torch_version}\)", proc.stdout), proc.stdout
        assert "Would install classwise-0.1.0" in proc.stdout and "torch" not in proc.stdout.split("Would install")[-1], proc.stdout
    else:  # pip would have to replace it, and offline it cannot: a torch below the floor is never kept
        assert proc.returncode != 0 and "satisfies the requirement torch" in proc.stderr, proc.stdout + proc.stderr


def test_wheel_installs_and_trains_from_an_empty_folder(wheel, tmp_path):
    # A fresh venv that borrows this one's dependencies (a path line in a .pth) instead of reinstalling
    # torch; such a line adds the folder only, so the checkout's editable classwise there stays out.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "CLASSWISE_"))}
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], env=env)

    empty = tmp_path / "empty"
    empty.mkdir()
    env.update(WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    where = _run([python, "-c", "import classwise.config as c; print(c.__file__); print(c.conf_dir())"], cwd=empty, env=env)
    module_file, conf = where.stdout.split()
    assert module_file.startswith(site) and conf.startswith(site), where.stdout  # the wheel's code and configs

    _run([venv / "bin" / "classwise-train", "debug=fast", "search.evaluation.max_per_class=20"], cwd=empty, env=env)
    (results,) = empty.glob("outputs/train/runs/*/results.json")
    assert '"clean_acc"' in results.read_text() and '"classes"' in results.read_text()
