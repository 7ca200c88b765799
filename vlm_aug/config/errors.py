"""The one error type of configuration: a config that cannot be used."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the fix."""
