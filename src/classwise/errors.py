"""The one exception type for bad user input: its message is a single line naming key, value and what is accepted."""


class ConfigError(ValueError):
    """A user-facing configuration or input error, raised before any compute."""
