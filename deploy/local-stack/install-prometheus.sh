#!/usr/bin/env bash
# Install Prometheus (with promtool) and Alertmanager (with amtool) from Debian.
#
# Idempotent: does nothing when the binaries are already on PATH. Runs as root with
# no interaction (CI calls it on a fresh Debian machine); uses sudo when not root.
# The Debian packages do not start services here; tests run the binaries themselves
# on 127.0.0.1 (see /work/shared/LOCAL-STACK.md).
set -euo pipefail

need=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 \
    || need+=(prometheus-alertmanager)

if [ "${#need[@]}" -eq 0 ]; then
    echo "prometheus and prometheus-alertmanager already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"

# The packages may try to start services where an init system runs; we run our own.
for bin in prometheus promtool prometheus-alertmanager amtool; do
    command -v "$bin" >/dev/null 2>&1 || { echo "missing after install: $bin" >&2; exit 1; }
done
echo "installed: ${need[*]}"
