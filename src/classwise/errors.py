"""The exceptions that reach a user as one line: bad input (ConfigError), a failed rank of a run (RankFailed)."""


class ConfigError(ValueError):
    """A user-facing configuration or input error, raised before any compute."""


class RankFailed(RuntimeError):
    """One rank of a distributed run failed: raised on every rank, with that rank's error in one line."""
