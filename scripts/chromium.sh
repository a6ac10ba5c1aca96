#!/usr/bin/env bash
# Chromium for the dashboard's browser tests (Debian/Ubuntu: apt-get, quiet, idempotent). Playwright
# drives it through executable_path: `playwright install` downloads browsers, which this project's
# machines cannot.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
else
  echo "scripts/chromium.sh: no apt-get; install Chromium and set EVOMERGE_CHROMIUM to its path" >&2
  exit 1
fi
