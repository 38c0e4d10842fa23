#!/usr/bin/env bash
# Scaling across cores: the gateway with 1, 2, 4 and 8 worker processes (server.workers, SO_REUSEPORT),
# pinned arm and `model: auto` (learned policy), beside the bare TCP hop (the floor) and vllm-router when
# installed, all in front of the fake upstream (loadtests/fake_upstream.py), measured by the peer harness
# (python -m loadtests.peer). Self-contained: no virtual environment, no network.
#
#   bash loadtests/peer/workers_scaling.sh OUT_DIR
#
# Needs: python3 (>= 3.11; PYTHON=... to choose another) that can import fastapi, pydantic, uvicorn, aiohttp,
# orjson, yaml, prometheus_client, numpy (put unpacked wheels on PYTHONPATH; the repository is added to it
# here). vllm-router: found as $PEER_HOME/vllm-router/bin/vllm-router (loadtests/peer/install_peers.sh) or
# on PATH; skipped otherwise. 202 s on a 16-core machine (measured once, docs/benchmarks.md); each group is cut at
# GROUP_TIMEOUT_S seconds (default 110) so that the whole stays under 6 minutes (a cut group writes nothing).
#
# Writes to OUT_DIR: floor.{json,md}, pinned.{json,md}, auto.{json,md} (one harness run each, with its own
# fake upstream), summary.md (all rows in one table), and the logs of each run.
#
# What limits it: the load generator (loadtests/kit/client.py) and the fake upstream are one Python process
# each, so past a few workers they, not the gateway, cap requests/s; CPU per request (the gateway's whole
# process tree, from /proc) is the figure that stays comparable across worker counts.
set -u
OUT=${1:?usage: workers_scaling.sh OUT_DIR}
PY=${PYTHON:-python3}
GROUP_TIMEOUT_S=${GROUP_TIMEOUT_S:-110}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 2

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["fastapi", "pydantic", "uvicorn", "aiohttp", "orjson", "yaml", "prometheus_client", "numpy", "starlette", "httpx"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "workers_scaling.sh: $PY cannot import: $missing (put them on PYTHONPATH)" >&2
  exit 2
fi

# vllm-router on PATH but not in the harness's peer home: a shim peer home pointing at it
PEER_HOME=${PEER_HOME:-$HOME/.cache/llm-gateway/peers}
floor="tcp"
if [ -x "$PEER_HOME/vllm-router/bin/vllm-router" ]; then
  floor="tcp,vllm-router"
elif command -v vllm-router >/dev/null 2>&1; then
  PEER_HOME="$OUT/peer-home"
  mkdir -p "$PEER_HOME/vllm-router/bin"
  ln -sf "$(command -v vllm-router)" "$PEER_HOME/vllm-router/bin/vllm-router"
  ln -sf "$(command -v "$PY")" "$PEER_HOME/vllm-router/bin/python"
  floor="tcp,vllm-router"
else
  echo "vllm-router not installed (neither $PEER_HOME/vllm-router nor on PATH): measuring the TCP floor only"
fi

# 16-token answers; 16 and 128 concurrent streams, 128 concurrent non-streamed requests, 3 rounds each
# (QUICK=1: one small round, 1 and 2 workers: a smoke test of the script, not a measurement)
WORKERS="1 2 4 8"
COMMON=(--rounds 3 --conc 16,128 --n 512 --ns-requests 1024 --ns-conc 128)
if [ "${QUICK:-0}" = 1 ]; then
  WORKERS="1 2"
  COMMON=(--rounds 1 --conc 16 --n 128 --ns-requests 128 --ns-conc 16)
fi
COMMON+=(--retries 0 --settle-s 1 --peer-home "$PEER_HOME" --gateway-log-level warning)
peers() {  # base name -> base,base:w2,... over $WORKERS
  local out=""
  for w in $WORKERS; do
    if [ "$w" = 1 ]; then out="$out,$1"; else out="$out,$1:w$w"; fi
  done
  echo "${out#,}"
}
export FAKE_TTFT_MS=20 FAKE_ITL_MS=2 FAKE_TOKENS=16 LOADTESTS_GATEWAY_AS_MODULE=1
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); python: $("$PY" -V 2>&1)"

run_group() {  # name, peers
  local start=$SECONDS
  echo "== $1: $2"
  timeout -k 10 "$GROUP_TIMEOUT_S" "$PY" -m loadtests.peer --only "$2" "${COMMON[@]}" --out "$OUT/$1" \
    >"$OUT/$1.log" 2>&1
  local rc=$?
  grep -E '^==|streams:|non-streaming' "$OUT/$1.log"
  [ $rc -eq 124 ] && echo "   $1: cut at ${GROUP_TIMEOUT_S} s (GROUP_TIMEOUT_S); see $OUT/$1.log"
  [ $rc -eq 0 ] || [ $rc -eq 124 ] || echo "   $1: exit status $rc; see $OUT/$1.log"
  echo "   $1: $((SECONDS - start)) s"
}

run_group floor "$floor"
run_group pinned "$(peers ours)"
run_group auto "$(peers ours-auto)"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from loadtests.peer.report import markdown
out = Path(sys.argv[1])
runs = [json.loads((out / f"{g}.json").read_text()) for g in ("floor", "pinned", "auto") if (out / f"{g}.json").exists()]
if not runs:
    sys.exit("no group finished: see the logs in " + str(out))
merged = dict(runs[0])
merged["rows"] = [row for r in runs for row in r["rows"]]
merged["command"] = "bash loadtests/peer/workers_scaling.sh OUT_DIR (three harness runs: floor, pinned, auto)"
(out / "summary.md").write_text(markdown(merged) + "\n")
print(markdown(merged))
EOF
echo "results: $OUT (summary.md; wall $SECONDS s)"
