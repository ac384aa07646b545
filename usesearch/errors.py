"""Errors that carry a message meant for the user, not a stack trace."""


class UsesearchError(Exception):
    """Base class: the CLI prints the message and exits non-zero."""


class MissingWeightsError(UsesearchError):
    """A weights file is neither on disk nor in a cache, and downloading is off."""


class CheckpointMismatchError(UsesearchError):
    """A head checkpoint was made for other backbones than the ones it is loaded onto."""


class NoTrainedHeadError(UsesearchError):
    """``embedder='use'`` was asked of a preset that has no trained head."""


class NotFoundError(UsesearchError, KeyError):
    """An id or name that does not exist. A ``KeyError`` too, for callers that catch
    that, but its own type so a bug inside a lookup is not reported as "not found"."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else "not found"


class UnknownPresetError(NotFoundError):
    """A preset name that is not in the registry."""
