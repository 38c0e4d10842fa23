#!/usr/bin/env bash
# Decode speed of SmolLM2-135M on two engines through the gateway (issue 17, docs/benchmarks.md): a vLLM-CPU
# server (the local stack's flags, core 1) and llama.cpp's server (the same weights as GGUF, 1 thread, core 0),
# both arms of one gateway (the llama.cpp one pinned_only), measured alternately by loadtests/decode_speed.py:
# ROUNDS rounds of 8 prompts x 128 tokens at 1 stream per engine, then 8 requests at 4 concurrent streams.
# Needs deploy/local/backend-env.sh and deploy/local/llamacpp-env.sh; free ports; stops what it started.
#   loadtests/llamacpp_vs_vllm.sh [OUT.json]     (default loadtests/results/decode-llamacpp-vs-vllm.json)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
H="${LLM_GATEWAY_HOME:-$HOME/.cache/llm-gateway}"
OUT="${1:-loadtests/results/decode-llamacpp-vs-vllm.json}"
ROUNDS="${ROUNDS:-3}"
TMP="$(mktemp -d)"
fp() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
VP=$(fp); LP=$(fp); GP=$(fp)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=1 setsid \
  "$H/vllm-venv/bin/python" -m vllm.entrypoints.openai.api_server --model "$H/models/smollm2-135m-instruct" \
  --served-model-name smollm2 --host 127.0.0.1 --port "$VP" \
  --enforce-eager --max-model-len 2048 --dtype bfloat16 --max-num-seqs 8 >"$TMP/vllm.log" 2>&1 &
pids+=($!)
setsid taskset -c 0 "$H/llamacpp-venv/bin/python" -m llama_cpp.server \
  --model "$H/models/smollm2-135m-instruct.Q4_1.gguf" --model_alias smollm2 --host 127.0.0.1 --port "$LP" \
  --n_threads 1 --n_ctx 2048 --interrupt_requests False >"$TMP/llamacpp.log" 2>&1 &
pids+=($!)
cat >"$TMP/gateway.yaml" <<YAML
server: {host: 127.0.0.1, port: $GP}
backends:
  - {name: smol-plain, url: "http://127.0.0.1:$VP", served_model: smollm2}
  - {name: smol-llamacpp, url: "http://127.0.0.1:$LP", served_model: smollm2, health_path: /v1/models, scrape_metrics: false}
arms:
  - {name: smollm2-plain, model: smollm2-135m, backends: [smol-plain]}
  - {name: smollm2-llamacpp, model: smollm2-135m, backends: [smol-llamacpp], pinned_only: true}
YAML
for _ in $(seq 300); do curl -sf "127.0.0.1:$VP/health" >/dev/null && break; sleep 1; done
setsid .venv/bin/python -m gateway serve --config "$TMP/gateway.yaml" >"$TMP/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do curl -sf "127.0.0.1:$GP/ready" >/dev/null && break; sleep 1; done

bench() {  # arm label concurrency
  echo "==> $2 (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  .venv/bin/python loadtests/decode_speed.py --base-url "http://127.0.0.1:$GP" --model smollm2-135m --arm "$1" \
    --no-eos 0 2 --label "$2" --concurrency "$3" --repeats 1 --max-tokens 128 \
    --note "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" --out "$OUT" >/dev/null
}
for round in $(seq "$ROUNDS"); do
  bench smollm2-plain "vllm-c1-r$round" 1
  bench smollm2-llamacpp "llamacpp-c1-r$round" 1
done
bench smollm2-plain vllm-c4 4
bench smollm2-llamacpp llamacpp-c4 4
echo "==> $OUT" >&2
