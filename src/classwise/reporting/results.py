"""`results.json`: the one contract between a run and everything that reads it."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3  # 2: every rate carries `_ci` and `_n`; a `timing` block. 3: `detection` is a verdict block, `detectors` all of them
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


def detector_blocks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every detector's block by name: `detectors` (schema 3 on), or an older run's `detection` (ours, from
    the patterns) and `detection_baselines.neural_cleanse`."""
    if isinstance(results.get("detectors"), dict):
        return results["detectors"]
    out = {}
    if isinstance(results.get("detection"), dict):
        out["patterns"] = results["detection"]
    nc = (results.get("detection_baselines") or {}).get("neural_cleanse")
    if isinstance(nc, dict):
        out["neural_cleanse"] = nc
    return out


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved config as `{dotted.key: value}` in its own key order (lists are values)."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flat_config(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return {k.rstrip("."): v for k, v in out.items()}


def first_difference(recorded: dict[str, Any], requested: dict[str, Any],
                     ignore: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """The first key (in `requested`'s order, then `recorded`'s) whose values differ: (key, recorded, requested).

    A key whose first part or last part is in `ignore` is left out (`paths`, or `seed` at any depth).
    """
    from classwise.models.shipped import without_shipped_target

    have, want = (flat_config({**c, "model": without_shipped_target(c["model"])} if "model" in c else c)
                  for c in (recorded, requested))
    for key in [*want, *(k for k in have if k not in want)]:
        parts = key.split(".")
        if parts[0] in ignore or parts[-1] in ignore:
            continue
        if have.get(key, "<unset>") != want.get(key, "<unset>"):
            return key, have.get(key, "<unset>"), want.get(key, "<unset>")
    return None
