"""The exceptions that reach a user as one line: bad input (ConfigError), a run that cannot go on (RunFailed)."""


class ConfigError(ValueError):
    """A user-facing configuration or input error, raised before any compute."""


class RunFailed(RuntimeError):
    """A run that cannot go on for a reason its one-line message names (a full disk, a failed rank)."""


class RankFailed(RunFailed):
    """One rank of a distributed run failed: raised on every rank, with that rank's error in one line."""
