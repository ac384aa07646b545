"""Errors that carry a message meant for the user, not a stack trace."""


class UsesearchError(Exception):
    """Base class: the CLI prints the message and exits non-zero."""


class MissingWeightsError(UsesearchError):
    """A weights file is neither on disk nor in a cache, and downloading is off."""


class CheckpointMismatchError(UsesearchError):
    """A head checkpoint was made for other backbones than the ones it is loaded onto."""


class NoTrainedHeadError(UsesearchError):
    """``embedder='use'`` was asked of a preset that has no trained head."""
