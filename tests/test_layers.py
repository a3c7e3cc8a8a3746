"""The layers' promises: the method (`classwise.patterns`, `classwise.attacks`) is plain PyTorch, callable from a
notebook without Lightning, Hydra, OmegaConf or W&B; and a dotted path names an object without a framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import classwise
from classwise.locate import locate

SRC = Path(classwise.__file__).parent
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "hydra_zen", "omegaconf", "wandb")


@pytest.mark.parametrize("package", ["patterns", "attacks"])
def test_the_method_imports_no_framework_anywhere(package):
    """Module level or inside a function: an import of a framework in these packages is a layer crossed."""
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(SRC)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert not found


def test_locate_finds_classes_functions_and_attributes_and_says_what_is_missing():
    from classwise.models.small_cnn import SmallCNN
    from classwise.patterns.baselines import BaselineTask

    assert locate("classwise.models.small_cnn.SmallCNN") is SmallCNN
    assert locate("classwise.patterns.baselines.BaselineTask.run") is BaselineTask.run
    assert locate("classwise.models") is classwise.models
    with pytest.raises(ModuleNotFoundError):
        locate("no_such_pkg.nets.Net")
    with pytest.raises(AttributeError):
        locate("classwise.models.small_cnn.NoSuchNet")
    with pytest.raises(ImportError):
        locate("classwise..models")


def _classwise_imports(package: str) -> list[tuple[str, str]]:
    """(file:line, the classwise module it imports) for every import of a classwise module in `package`."""
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "classwise":  # from classwise import intervals
                names = [f"classwise.{a.name}" for a in node.names]
            else:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [(f"{path.relative_to(SRC)}:{node.lineno}", n) for n in names if n.split(".")[0] == "classwise"]
    return found


# Settings travel downwards only: the entry points (train, search, config, ...) build the callback, the callback
# the pipeline's job, the pipeline calls the method. Each layer may import what is below it, never above.
BELOW = {
    "patterns": ("patterns", "attacks", "models.shipped", "errors", "intervals", "locate", "progress", "timing"),
    "attacks": ("attacks", "errors", "progress"),
    "pipeline": ("pipeline", "patterns", "attacks", "data", "models", "reporting", "errors", "intervals", "progress",
                 "timing", "ranks", "locate", "checkpoints"),
    "callbacks": ("callbacks", "pipeline", "patterns", "data", "models", "reporting", "errors", "progress", "timing",
                  "ranks", "locate", "checkpoints"),
}


@pytest.mark.parametrize("package", sorted(BELOW))
def test_each_layer_imports_only_the_layers_below_it(package):
    allowed = tuple(f"classwise.{name}" for name in BELOW[package])
    above = [f"{where} {name}" for where, name in _classwise_imports(package)
             if not any(name == a or name.startswith(f"{a}.") for a in allowed)]
    assert not above
