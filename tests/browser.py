"""Headless Chromium (Debian's package) for tests that look at a page.

``make test`` installs it (deploy/local-stack/install-chromium.sh). Tests that need
it skip when it is absent, unless ``DRIFTWARDEN_REQUIRE_BROWSER=1`` (set by
``make test``), where a missing browser fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["chromium", "dump_dom", "screenshot"]

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """The browser binary, or skip (fail under DRIFTWARDEN_REQUIRE_BROWSER=1)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("DRIFTWARDEN_REQUIRE_BROWSER") == "1":
        pytest.fail("no chromium on PATH: run deploy/local-stack/install-chromium.sh")
    pytest.skip("no chromium on PATH (deploy/local-stack/install-chromium.sh installs it)")


def _run(url: str, *extra: str, timeout: float = 60.0) -> str:
    with tempfile.TemporaryDirectory(prefix="dw-chromium-") as profile:
        out = subprocess.run(
            [chromium(), *_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    return out.stdout


def dump_dom(url: str) -> str:
    """The page's DOM after load, as the browser serialises it."""
    return _run(url, "--dump-dom")


def screenshot(url: str, path: Path, width: int = 1300, height: int = 1600) -> Path:
    """A PNG of the page at ``width`` x ``height``."""
    _run(url, f"--screenshot={path}", f"--window-size={width},{height}")
    assert path.exists() and path.stat().st_size > 5_000, "empty screenshot"
    return path
