"""`results.json`: the one contract between a run and everything that reads it."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
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
    data["environment"] = environment()  # the last write's, so a results page can say when and where
    path = run_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)
    return path


def environment() -> dict[str, Any]:
    """When and on what a result was written: date, Python, platform, CPU count, torch and its GPU."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("classwise")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        own = None
    env: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "classwise": own,
                           "python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
                           "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")  # a run has imported it; the report CLI stays free of it
    if torch is not None:
        env["torch"] = torch.__version__
        env["threads"] = torch.get_num_threads()
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
