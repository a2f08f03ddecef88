#!/usr/bin/env bash
# Install Debian's Chromium for the tests that open the status page and the replay
# report in a real browser. Idempotent; runs as root or through sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
command -v chromium >/dev/null 2>&1 || { echo "missing after install: chromium" >&2; exit 1; }
echo "installed: chromium"
