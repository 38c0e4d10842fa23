#!/usr/bin/env bash
# Profile the local stack's arms on the router's six task families, in growing rounds, for
# `llm-gateway train`. Resumable: rerun it and finished (prompt, arm) pairs are skipped, so a
# stopped run continues where it was; every round extends all arms alike, so a run cut short
# still leaves a balanced profile.
#
# Usage: loadtests/profile_router.sh [ROUNDS...]      (default: 1 2 3)
#   GATEWAY   the gateway of a running local stack (default http://127.0.0.1:8080)
#   OUT       the profile file (default profiles/router.jsonl; a .meta.json sidecar records each run)
#   ARMS      comma-separated arms, profiled one at a time (default: the default stack's three)
#   CONCURRENCY  concurrent requests per arm (default 4, recorded in the meta file)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GATEWAY="${GATEWAY:-http://127.0.0.1:8080}"
OUT="${OUT:-profiles/router.jsonl}"
ARMS="${ARMS:-smollm2-plain,smollm2-spec-ngram4,qwen-coder-0.5b-plain}"
CONCURRENCY="${CONCURRENCY:-4}"
METRICS="${BACKEND_METRICS:-smol-plain=http://127.0.0.1:8001,smol-ngram4=http://127.0.0.1:8002,qwen-plain=http://127.0.0.1:8003}"

# prompts per task in each round (cumulative: a round's sample contains the previous one's)
declare -A SIZE=(
  [1]="gsm8k=40 mmlu-circular=60 humaneval=40 rename=40 extract=60 mtbench=30"
  [2]="gsm8k=100 mmlu-circular=160 humaneval=100 rename=100 extract=150 mtbench=80"
  [3]="gsm8k=200 mmlu-circular=300 humaneval=164 rename=160 extract=250 mtbench=80"
  [4]="gsm8k=320 mmlu-circular=500 humaneval=164 rename=305 extract=400 mtbench=80"
)
# answers that must hold a whole program need more room than 256 tokens
declare -A MAX_TOKENS=([humaneval]=384 [rename]=512)

rounds=("$@"); [ ${#rounds[@]} -eq 0 ] && rounds=(1 2 3)
IFS=, read -r -a arms <<<"$ARMS"
for round in "${rounds[@]}"; do
  [ -n "${SIZE[$round]:-}" ] || { echo "profile_router: unknown round $round (1-4)" >&2; exit 2; }
  for arm in "${arms[@]}"; do
    for pair in ${SIZE[$round]}; do
      task="${pair%%=*}" n="${pair##*=}"
      printf '\033[1m==> round %s, %s, %s x %s\033[0m\n' "$round" "$arm" "$task" "$n"
      .venv/bin/llm-gateway profile --gateway "$GATEWAY" --arms "$arm" --tasks "$task" --per-task "$n" \
        --concurrency "$CONCURRENCY" --max-tokens "${MAX_TOKENS[$task]:-256}" --out "$OUT" \
        --backend-metrics "$METRICS"
    done
  done
done
