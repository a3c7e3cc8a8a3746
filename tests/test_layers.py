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
