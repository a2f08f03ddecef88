"""The error root, in a leaf module every package may import (it imports nothing of ours).

Only fatal errors stop the service loop. ``monitor.errors`` re-exports these.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DriftwardenError", "InputFileError", "SinkError"]


class DriftwardenError(Exception):
    """Root of every error driftwarden raises on purpose."""


class ConfigError(DriftwardenError):
    """The configuration is invalid; the message names each key and what is allowed."""


class SinkError(DriftwardenError):
    """An outgoing message or webhook could not be delivered."""


class InputFileError(DriftwardenError):
    """A data file (replay, labels, baseline) cannot be read as its type says; the
    message names the file and the problem, on one line."""
