#!/usr/bin/env bash
# Run every test suite on a fresh machine: installs what the tests need, then runs nox.
#
#   ./test.sh                 # every default session (what CI runs)
#   ./test.sh -s core docs    # some sessions; arguments go to nox
#
# Installs, when missing: redis-server, PostgreSQL binaries and chromium (for the ui session's
# browser tests) (apt-get; needs root or sudo), and nox (pip). The test fixtures start throwaway PostgreSQL and Redis servers from those
# binaries, so nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: $1 is missing and this machine has no apt-get; install it and run again" >&2
    exit 1
  fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$1" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
command -v chromium >/dev/null 2>&1 || apt_install chromium
python3 -m nox --version >/dev/null 2>&1 || python3 -m pip install -q --upgrade nox

exec python3 -m nox "$@"
