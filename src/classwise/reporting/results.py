"""`results.json`: the one contract between a run and everything that reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: every rate carries `_ci` and `_n`; a `timing` block
RESULTS_FILE = "results.json"


def read_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def update_results(run_dir: str | Path, **sections: Any) -> Path:
    """Merge top-level sections into `run_dir/results.json`, written atomically (never half a file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = read_results(run_dir)
    data["schema_version"] = SCHEMA_VERSION
    data.update(sections)
    path = run_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
