"""Errors that reach the user as one readable line (the entry point prints them without a traceback)."""


class UserError(ValueError):
    """Bad input from the user: a config value, a task token, a data path. The message is one line."""


class DataError(UserError):
    """A dataset is missing, corrupt or not in the expected on-disk layout."""
