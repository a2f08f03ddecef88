"""The console while ``run`` and ``replay`` work: one live line on a terminal, plain lines
otherwise (logs and CI), and a clean summary at the end.

>>> import io
>>> out = io.StringIO()
>>> line = StatusLine(out, tty=False, every=0.0)
>>> line.update("events=10")
>>> line.close("done: events=10")
>>> out.getvalue()
'events=10\\ndone: events=10\\n'
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["StatusLine"]


class StatusLine:
    """Rewrites one line on a terminal; prints at most every ``every`` seconds elsewhere."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None, every: float = 10.0):
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.every = every
        self._last = -float("inf")
        self._width = 0

    def update(self, text: str) -> None:
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.out.write(f"\r{text}{pad}")
            self._width = len(text)
            self.out.flush()
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(text, file=self.out, flush=True)

    def close(self, summary: str) -> None:
        """End the live line and print ``summary`` on its own line."""
        if self.tty and self._width:
            self.out.write("\r" + " " * self._width + "\r")
        print(summary, file=self.out, flush=True)
