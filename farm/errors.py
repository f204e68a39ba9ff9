"""One tree of errors. Every message is a sentence a user can act on: what, where, and the fix."""

from __future__ import annotations


class FarmError(Exception):
    """Base of every error the farm raises on purpose."""


class InputError(FarmError, ValueError):
    """A source file, request or parameter is unusable; retrying will not help."""


class TooNewError(InputError):
    """An artifact was written in a format newer than this farm understands."""


class DestinationError(FarmError, OSError):
    """The destination cannot be written (permissions, outside allowed roots, full disk)."""


class SourceChangedError(FarmError):
    """A source file changed while it was being built from; the build was discarded."""


class ArtifactInvalidError(FarmError):
    """An artifact on disk failed validation; the message says which file and why."""


class BrokerError(FarmError, ConnectionError):
    """The registry or broker cannot be reached; the request is safe to retry."""


class InputWarning(UserWarning):
    """A request builds, as GenVarLoader's own writer would build it, but perhaps not as its
    submitter expects (regions outside the variants' contigs); the message says how."""


class StopRequested(BaseException):
    """The worker is stopping and its grace period ran out: give the key back.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` in a builder
    swallows it; the staging directory is still removed on the way out.
    """


class BuildCancelled(FarmError):
    """Somebody cancelled the build (``farm cancel``); it stops at its next progress report."""


class FencedOut(BaseException):
    """This builder's grant is no longer the newest: another builder took its key over, or
    a newer request took its destination. Whatever it built is discarded unpublished.

    A BaseException, like :class:`StopRequested`, so no ``except Exception`` in a builder
    swallows it; the staging directory is still removed on the way out.
    """

    def __init__(self, message: str, newer_key: str | None = None) -> None:
        super().__init__(message)
        self.newer_key = newer_key  # a newer request for the same destination, if that is why
