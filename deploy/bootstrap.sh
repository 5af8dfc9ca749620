#!/usr/bin/env bash
# Install everything msvlm-node and its tests need on a fresh Debian machine.
# Idempotent; run as root (or with sudo available). Used by the README and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: dcmtk (storescu/storescp/echoscu/dsrdump: real DICOM peers),
# dicom3tools (dciodvfy: SR validation), postgresql (the suite runs on it too),
# a Java runtime (METEOR in model evaluation), chromium (dashboard test, headless).
need=()
for cmd_pkg in /usr/bin/storescu:dcmtk /usr/bin/dciodvfy:dicom3tools /usr/bin/java:default-jre-headless \
               /usr/bin/chromium:chromium; do
  [ -x "${cmd_pkg%%:*}" ] || need+=("${cmd_pkg##*:}")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi

PYTHON="${PYTHON:-python3}"
# The CPU build of PyTorch first: a bare `torch` requirement could pull a multi-GB CUDA build.
"$PYTHON" -m pip install --quiet "torch==2.13.0"
"$PYTHON" -m pip install --quiet -e ".[dev,lora,eval]"
# pyenv installs console scripts behind shims that only appear after a rehash
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
echo "bootstrap: done"
