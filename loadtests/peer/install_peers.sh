#!/usr/bin/env bash
# Installs the peers of the peer comparison (loadtests/peer/) from PyPI, each into its own venv under
# ${PEER_HOME:-~/.cache/llm-gateway/peers}, never into the project's .venv:
#   vllm-router   vLLM's Rust router (a wheel with the compiled binary), pinned
#   litellm       LiteLLM proxy (litellm[proxy]), pinned; large (~150 MB with its dependencies, a few minutes)
# Usage: loadtests/peer/install_peers.sh [vllm-router] [litellm]   (default: both)
# Re-running is cheap: a venv whose pinned spec is already installed is left as it is.
set -euo pipefail
HOME_DIR="${PEER_HOME:-$HOME/.cache/llm-gateway/peers}"
PY="${PYTHON:-python3}"
declare -A SPEC=(
  [vllm-router]="vllm-router==0.1.17"
  [litellm]="litellm[proxy]==1.108.7"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(vllm-router litellm)
mkdir -p "$HOME_DIR"
for name in "${names[@]}"; do
  spec="${SPEC[$name]:-}"
  if [ -z "$spec" ]; then echo "unknown peer '$name' (known: ${!SPEC[*]})" >&2; exit 2; fi
  venv="$HOME_DIR/$name"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.spec" 2>/dev/null)" = "$spec" ]; then
    echo "$name: $spec already in $venv"; continue
  fi
  echo "$name: installing $spec into $venv"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$spec" 2>&1 | { grep -v "is ignored" || true; }
  echo "$spec" > "$venv/.spec"
done
