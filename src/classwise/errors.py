"""The exceptions that reach a user as one line: bad input (ConfigError), a run that cannot go on (RunFailed)."""


class ConfigError(ValueError):
    """A user-facing configuration or input error, raised before any compute."""


class RunFailed(RuntimeError):
    """A run that cannot go on for a reason its one-line message names (a full disk, a failed rank)."""


class RankFailed(RunFailed):
    """One rank of a distributed run failed: raised on every rank, with that rank's error in one line."""


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
