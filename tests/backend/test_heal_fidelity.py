"""loadtests/heal_fidelity.py on tiny models: the full model agrees with itself, a pruned one does not."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_variant_builder import make_model
from test_variant_healer import pruned

ROOT = Path(__file__).resolve().parents[2]


def test_fidelity_of_the_model_itself_and_of_a_pruned_variant(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    rows = [
        {"arm": "full", "prompt_id": "gsm8k/1", "task": "gsm8k", "prompt": "alpha beta", "text": "gamma delta epsilon"},
        {"arm": "full", "prompt_id": "mmlu/2", "task": "mmlu", "prompt": "beta gamma", "text": "alpha alpha beta"},
        {"arm": "other", "prompt_id": "mmlu/2", "task": "mmlu", "prompt": "beta gamma", "text": "ignored"},
        {"arm": "full", "prompt_id": "mmlu/3", "task": "mmlu", "prompt": "x", "text": "", "error": "timeout"},
    ]
    profile = tmp_path / "profile.jsonl"
    profile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "fidelity.json"
    cmd = [sys.executable, "-m", "loadtests.heal_fidelity", "--teacher", str(src)]
    cmd += ["--variant", f"self={src}", "--variant", f"pruned={variant}", "--profile", str(profile)]
    done = subprocess.run(
        [*cmd, "--reference-arm", "full", "--json", str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["sequences"] == 2  # the other arm's row and the failed row are skipped
    same, cut = result["results"]["self"], result["results"]["pruned"]
    assert set(same) == {"all", "gsm8k", "mmlu"}
    assert same["all"]["top1_agreement"] == 1.0 and abs(same["all"]["kl"]) < 1e-3
    assert cut["all"]["kl"] > same["all"]["kl"] and cut["all"]["tokens"] == same["all"]["tokens"]


def test_a_profile_without_the_reference_arm_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "profile.jsonl"
    profile.write_text(json.dumps({"arm": "other", "prompt_id": "a/1", "task": "a", "prompt": "p", "text": "t"}) + "\n")
    module = importlib.import_module("loadtests.heal_fidelity")
    src = make_model(tmp_path / "m", tie=True)
    argv = ["--teacher", str(src), "--variant", f"x={src}", "--profile", str(profile), "--reference-arm", "full"]
    assert module.main(argv) == 2
    assert "no answered rows of arm 'full'" in capsys.readouterr().err
