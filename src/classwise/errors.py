"""The exceptions that reach a user as one line: bad input (ConfigError), a run that cannot go on (RunFailed)."""


class ConfigError(ValueError):
    """A user-facing configuration or input error, raised before any compute."""


class MissingInput(ConfigError):
    """One job's input is not there (a checkpoint, a run folder). In a sweep that job fails, recorded in its
    folder, and the others go on: a population member whose training failed must not stop the benchmark."""


class RunFailed(RuntimeError):
    """A run that cannot go on for a reason its one-line message names (a full disk, a failed rank)."""


class RankFailed(RunFailed):
    """One rank of a distributed run failed: raised on every rank, with that rank's error in one line."""


def one_line(exc: BaseException, prefix: str = "") -> str:
    """Hydra's or OmegaConf's multi-line error, and its causes, as one line, the key it names in brackets:
    `Could not override 'search.foo'.: Key 'foo' not in 'SearchSettings' (search.foo)`. `prefix` goes before
    a key named relative to a block (`search` for a merge into the search group's schema)."""
    parts, texts, seen = [], set(), 0
    while exc is not None and seen < 4:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        full_key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
        text = next((line for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type="))), "")
        if full_key and prefix:
            full_key = f"{prefix}.{full_key}"
        if text and "$VALUE" not in text and not text.startswith("To append to your config use") and text not in texts:
            texts.add(text)
            parts.append(text.rstrip(":") + (f" ({full_key})" if full_key else ""))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return ": ".join(parts) or "the config does not compose"


def import_extra(module: str, key: str, package: str, extra: str):
    """Import an optional dependency, or fail with one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # the package is there but one of its own imports failed: its traceback says which
        raise ConfigError(f"{key} needs {package}, which is not installed; accepted: "
                          f"pip install 'classwise[{extra}]' (or another {key.partition('=')[0]})") from None
