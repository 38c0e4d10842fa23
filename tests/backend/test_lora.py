"""LoRA healing (variants/lora.py): adapters start as a no-op, merge exactly, and heal like full tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_variant_builder import make_model, tensors
from test_variant_healer import heal, pruned
from transformers import AutoModelForCausalLM

from variants import checkpoint as hc
from variants import healer as vh
from variants import lora


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapters_start_as_a_no_op_and_merge_into_the_same_function(tmp_path: Path) -> None:
    make_model(tmp_path / "m", tie=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    names_before = {n: p.shape for n, p in model.state_dict().items()}
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    plain = logits(model, ids)

    torch.manual_seed(0)
    model.requires_grad_(False)
    adapted = lora.attach(list(model.model.layers[1:]), rank=4, alpha=8.0)
    assert len(adapted) == len(lora.TARGETS) * (len(model.model.layers) - 1)
    assert torch.allclose(logits(model, ids), plain)  # B = 0: the adapted model starts where it was
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert not any(n.startswith("model.layers.0.") for n in trainable)

    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_B"):
                module.lora_B.normal_(0, 0.05)
    hooked = logits(model, ids)
    assert not torch.allclose(hooked, plain)
    assert lora.merge(model) == len(adapted)
    assert {n: p.shape for n, p in model.state_dict().items()} == names_before  # plain shapes again
    assert torch.allclose(logits(model, ids), hooked, atol=1e-4)


def test_attach_refuses_a_zero_rank_and_layers_without_projections(tmp_path: Path) -> None:
    make_model(tmp_path / "m", tie=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.attach(list(model.model.layers), rank=0, alpha=8.0)
    with pytest.raises(ValueError, match="no projection named"):
        lora.attach([model.model.norm], rank=2, alpha=4.0)


def test_lora_healing_reduces_the_loss_and_writes_plain_weights(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    full = heal(src, variant, tmp_path / "full", train_layers="from-gap")["healing"]
    meta = heal(src, variant, tmp_path / "lora", train_layers="from-gap", lora_rank=4, lora_alpha=8.0, lr=1e-2)
    h = meta["healing"]
    assert h["held_out_kl_after"] < h["held_out_kl_before"]
    assert h["lora_rank"] == 4 and h["lora_alpha"] == 8.0 and "LoRA rank 4" in h["method"]
    assert "lora_rank" not in full and "full fine-tuning" in full["method"]
    assert 0 < h["trainable_parameters"] < full["trainable_parameters"] / 2
    before, after = tensors(variant), tensors(tmp_path / "lora")
    assert after.keys() == before.keys()  # merged: no adapter tensors in the served checkpoint
    name = "model.layers.4.mlp.up_proj.weight"
    assert after[name].dtype == before[name].dtype and not torch.equal(after[name], before[name])
    assert torch.equal(before["model.norm.weight"], after["model.norm.weight"])  # LoRA trains adapters only
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5


def test_a_lora_run_resumes_its_adapters_and_a_full_checkpoint_is_not_reused(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    opts = dict(steps=6, lora_rank=2, lora_alpha=4.0, lr=1e-2)
    whole = heal(src, variant, tmp_path / "whole", **opts)
    with pytest.raises(KeyboardInterrupt):
        heal(src, variant, tmp_path / "split", stop_after=2, **opts)
    resumed = heal(src, variant, tmp_path / "split", **opts)
    assert resumed["healing"]["loss_curve"] == whole["healing"]["loss_curve"]
    a, b = tensors(tmp_path / "whole"), tensors(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(hc.CheckpointError, match="another healing run"):
        heal(src, variant, tmp_path / "split", steps=8)  # full fine-tuning on a LoRA checkpoint


def test_a_negative_rank_is_refused(tmp_path: Path) -> None:
    src, variant = pruned(tmp_path)
    with pytest.raises(vh.VariantError, match="--lora-rank must be >= 0"):
        heal(src, variant, tmp_path / "out", lora_rank=-1)
