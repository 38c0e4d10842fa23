"""Healing a pruned variant by distillation, on tiny randomly initialised models made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_variant_builder import WORDS, make_model, tensors
from transformers import AutoModelForCausalLM

from variants import builder as vb
from variants import checkpoint as hc
from variants import healer as vh
from variants.heal_config import HealConfig

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    {"id": f"h{i}", "messages": [{"role": "user", "content": " ".join(WORDS[i % 13 : i % 13 + 5])}]} for i in range(20)
]
SCALE = 4.0
FAST = dict(steps=12, seq_len=32, batch_size=4, lr=1e-3, ce_weight=0.0, warmup=2, answer_tokens=8, save_every=4)
FAST["train_layers"] = "all"


def heal(teacher: Path, variant: Path, out: Path, **kw: Any) -> dict[str, Any]:
    """``heal`` with the fast settings; ``kw``: :class:`HealConfig` fields, ``log`` and ``stop_after``."""
    run = {"log": kw.pop("log", lambda *_: None), "stop_after": kw.pop("stop_after", None)}
    config = HealConfig(**{**FAST, "smoke": False, "force": True, "seed": 0, "data_source": "test", **kw})
    return vh.heal(teacher, variant, out, PROMPTS, config, progress=False, **run)


def strong_model(path: Path, tie: bool) -> Path:
    """A tiny random model whose layers matter (weights scaled up), so pruning costs something."""
    make_model(path, tie=tie)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layers." in name and name.endswith("proj.weight"):
                p.mul_(SCALE)
    model.to(torch.bfloat16).save_pretrained(path)
    return path


def pruned(tmp_path: Path, *, tie: bool = True, drop: int = 3) -> tuple[Path, Path]:
    src = strong_model(tmp_path / f"src-{tie}", tie)
    out = tmp_path / f"pruned-{tie}"
    vb.build(src, out, PROMPTS[:6], drop=drop, seed=0, calibration_source="test", smoke=False, log=lambda *_: None)
    return src, out


def test_healing_reduces_the_distillation_loss(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    meta = heal(src, variant, tmp_path / "healed")["healing"]
    assert meta["held_out_kl_before"] > 0
    assert meta["held_out_kl_after"] < meta["held_out_kl_before"]
    curve = [row[2] for row in meta["loss_curve"]]  # [step, loss, kl, ce]
    assert sum(curve[-3:]) / 3 < curve[0]


@pytest.mark.parametrize("tie", [True, False])
def test_the_healed_checkpoint_reloads_with_its_layers_and_tie(tmp_path: Path, tie: bool) -> None:
    src, variant = pruned(tmp_path, tie=tie)
    heal(src, variant, tmp_path / "healed", steps=3)
    config = json.loads((tmp_path / "healed" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5 and config["tie_word_embeddings"] is tie
    assert ("lm_head.weight" in tensors(tmp_path / "healed")) is (not tie)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "healed")
    assert len(model.model.layers) == 5
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) is tie
    healed, before = tensors(tmp_path / "healed"), tensors(variant)
    assert healed.keys() == before.keys()
    assert healed["model.layers.4.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert not torch.equal(healed["model.layers.4.mlp.down_proj.weight"], before["model.layers.4.mlp.down_proj.weight"])


def test_metadata_is_written(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    meta = heal(src, variant, tmp_path / "healed", steps=4)
    assert json.loads((tmp_path / "healed" / vb.METADATA_FILE).read_text()) == meta
    assert meta["source_model"] == str(src.resolve()) and meta["num_hidden_layers"] == 5
    assert len(meta["dropped"]) == 3
    h = meta["healing"]
    assert h["teacher"] == str(src.resolve()) and h["steps"] == 4 and h["seed"] == 0
    assert h["data"]["prompts"] == len(PROMPTS) and h["data"]["prompts_sha256"] == hc.sha256_json(
        [p["messages"] for p in PROMPTS]
    )
    assert len(h["data"]["healing_data_sha256"]) == 64
    assert h["data"]["train_sequences"] + h["data"]["held_out_sequences"] == len(PROMPTS)
    assert isinstance(h["final_loss"], float) and h["wall_s"] >= 0
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "healed" / name).exists(), name


def test_teacher_answers_are_cached(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    cache = tmp_path / "cache"
    a = heal(src, variant, tmp_path / "a", steps=1, cache_dir=cache)
    assert len(list(cache.glob("answers-*.json"))) == 1
    logs: list[str] = []
    heal(src, variant, tmp_path / "b", steps=1, cache_dir=cache, work_dir=tmp_path / "wb", log=logs.append)
    assert any("from cache" in line for line in logs)
    assert (
        a["healing"]["data"]["healing_data_sha256"]
        == json.loads((tmp_path / "b" / vb.METADATA_FILE).read_text())["healing"]["data"]["healing_data_sha256"]
    )


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    whole = heal(src, variant, tmp_path / "whole", steps=8)
    with pytest.raises(KeyboardInterrupt):
        heal(src, variant, tmp_path / "split", steps=8, stop_after=3)
    assert not (tmp_path / "split").exists()
    assert json.loads((tmp_path / "split.heal-work" / hc.CHECKPOINT_META).read_text())["step"] == 3
    logs: list[str] = []
    resumed = heal(src, variant, tmp_path / "split", steps=8, log=logs.append)
    assert any("resuming" in line and "step 3/8" in line for line in logs)
    assert resumed["healing"]["loss_curve"] == whole["healing"]["loss_curve"]
    a, b = tensors(tmp_path / "whole"), tensors(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_corrupted_checkpoint_is_refused(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        heal(src, variant, tmp_path / "out", stop_after=2)
    ckpt = tmp_path / "out.heal-work" / hc.CHECKPOINT
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(hc.CheckpointError, match="is corrupted"):
        heal(src, variant, tmp_path / "out")
    heal(src, variant, tmp_path / "out", steps=2, restart=True)  # --restart discards it
    assert (tmp_path / "out" / "config.json").exists()


def test_a_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        heal(src, variant, tmp_path / "out", stop_after=2)
    with pytest.raises(hc.CheckpointError, match=r"another healing run \(lr: checkpoint 0\.001, now 0\.002\)"):
        heal(src, variant, tmp_path / "out", lr=2e-3)
    _, other = pruned(tmp_path / "other", drop=2)
    with pytest.raises(hc.CheckpointError, match=r"another healing run.*variant"):
        heal(src, other, tmp_path / "out")


def test_a_healed_variant_failing_its_smoke_test_is_not_written(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    with pytest.raises(vb.SmokeTestFailed, match=r"healed variant failed its smoke test.*--allow-failing-smoke"):
        heal(src, variant, tmp_path / "out", steps=2, smoke=True)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.heal-work" / hc.CHECKPOINT).exists()  # kept: more steps can follow
    meta = heal(src, variant, tmp_path / "out", steps=2, smoke=True, allow_failing_smoke=True)
    assert meta["healing"]["smoke_test"]["passed"] is False


def test_from_gap_trains_only_the_layers_above_the_first_gap(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    meta = heal(src, variant, tmp_path / "out", steps=2, train_layers="from-gap")
    first = max(0, min(d["layer"] for d in meta["dropped"]) - 1)
    before, after = tensors(variant), tensors(tmp_path / "out")
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    for i in range(first):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        assert torch.equal(before[name], after[name])
    assert not torch.equal(before["model.layers.4.mlp.up_proj.weight"], after["model.layers.4.mlp.up_proj.weight"])
    assert meta["healing"]["trainable_parameters"] > 0


def test_script_entry_point_exit_codes(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    data = tmp_path / "heal.json"
    data.write_text(json.dumps({"source": "unit", "prompts": PROMPTS}))
    cmd = [sys.executable, "-m", "variants", "heal", "--teacher", str(src)]
    cmd += ["--variant", str(variant), "--out", str(tmp_path / "out"), "--healing-json", str(data)]
    cmd += ["--steps", "2", "--seq-len", "32", "--answer-tokens", "4", "--no-progress"]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 3, refused.stderr
    assert "healed variant failed its smoke test" in refused.stderr
    done = subprocess.run([*cmd, "--allow-failing-smoke"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout  # the refused run's final checkpoint is reused
    bad = subprocess.run([*cmd, "--lr", "1", "--allow-failing-smoke", "--force"], capture_output=True, text=True)
    assert bad.returncode == 2 and "another healing run" in bad.stderr
