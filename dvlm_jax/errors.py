"""Errors every layer may raise; this module imports nothing of the project's own."""


class ConfigError(ValueError):
  """A config key is unknown or its value is inconsistent; the message names the key."""
