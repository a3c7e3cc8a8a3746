"""`locate(path)`: the object a dotted path names (`my_pkg.nets.Net`), imported without a framework."""

from __future__ import annotations

import importlib
from typing import Any


def locate(path: str) -> Any:
    """The class, function or attribute at `path`; ImportError or AttributeError where it is not there.

    Hydra's `get_object` does the same but logs an error of several lines before raising, which a
    one-line refusal must not be preceded by; and `classwise.patterns` imports no framework.
    """
    parts = path.split(".")
    if not all(parts):
        raise ImportError(f"{path!r} is not a dotted path")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise  # the module is there but imports something that is not: its own error
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"No module named {parts[0]!r}", name=parts[0])
