"""Errors a user can cause. Command lines turn them into one `error: ...` line and exit 2."""


class UserError(Exception):
    """Bad input from the user: a config, a flag, a data folder, a file."""


class ConfigError(UserError):
    """A config dict that cannot be built or trained."""


class DataError(UserError):
    """A dataset that cannot be found, read or used."""
