#!/usr/bin/env bash
# Make PostgreSQL's server binaries available for the tests (Debian/Ubuntu: apt-get, quiet, idempotent).
# The tests start their own throwaway cluster in a temporary directory; nothing is configured here.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  # Debian starts a system cluster on install; the tests use their own, so stop it if it runs
  $SUDO service postgresql stop >/dev/null 2>&1 || true
else
  echo "scripts/postgres.sh: no apt-get; install PostgreSQL (initdb, pg_ctl) yourself" >&2
  exit 1
fi
