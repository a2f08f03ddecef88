"""One error root for the service; only fatal errors stop the loop."""

from __future__ import annotations

__all__ = ["ConfigError", "DecodeError", "DriftwardenError", "SinkError"]


class DriftwardenError(Exception):
    """Root of every error driftwarden raises on purpose."""


class ConfigError(DriftwardenError):
    """The configuration is invalid; the message names each key and what is allowed."""


class DecodeError(DriftwardenError):
    """A payload could not be decoded; keeps the raw bytes so it can be dead-lettered."""

    def __init__(self, reason: str, detail: str, raw: bytes) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.raw = raw


class SinkError(DriftwardenError):
    """An outgoing message or webhook could not be delivered."""
