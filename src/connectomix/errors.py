"""The package's exception types.

Every error caused by bad input derives from :class:`CxError`; its message is one line that says what was
expected and what was found. The CLI prints it as ``error: <message>`` and exits non-zero.
"""

from __future__ import annotations


class CxError(Exception):
    """Base class of every error connectomix raises on purpose (bad input, missing data, bad state)."""

    def __str__(self) -> str:
        # One line, always: the CLI prints exactly this.
        return " ".join(super().__str__().split())


class InputError(CxError, ValueError):
    """An argument or file content is not what was expected (dtype, shape, value range, format)."""


class NotFoundError(CxError, FileNotFoundError):
    """A file, dataset, dataset member or id that was asked for does not exist."""


class CorruptDataError(CxError, OSError):
    """A file exists but cannot be decoded (truncated HDF5, broken zarr metadata, bad PNG)."""


class UnsupportedError(CxError, NotImplementedError):
    """An operation or URL scheme that a backend does not support (e.g. writing to an HDF5 URL)."""


class ConflictError(CxError):
    """The request conflicts with the current state (a task claimed by someone else, a lease that expired,
    nothing to undo). The web API answers 409."""


class AuthenticationError(CxError):
    """No credentials or unknown credentials (the web API answers 401)."""


class ForbiddenError(CxError):
    """Known credentials without the role an action needs (the web API answers 403)."""


class BlockFailedError(CxError, RuntimeError):
    """A block of a block-wise run raised or returned something unusable (after its retries); the message
    names the block's box."""
