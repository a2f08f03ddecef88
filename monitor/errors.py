"""One error root for the service; only fatal errors stop the loop.

The classes live in ``connectors.errors`` (a leaf module, so the connectors need
nothing of ``monitor``); this module is where the service imports them from.
"""

from __future__ import annotations

from connectors.errors import ConfigError, DriftwardenError, InputFileError, SinkError

__all__ = ["ConfigError", "DriftwardenError", "InputFileError", "SinkError"]
