"""Stop requests: SIGTERM and SIGINT call a stop function (the current batch finishes)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

__all__ = ["install_stop"]

log = logging.getLogger("driftwarden")


def install_stop(stop: Callable[[], object]) -> None:
    """Call ``stop()`` on SIGTERM or SIGINT (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
