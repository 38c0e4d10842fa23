"""The distillation step of healing (torch, imported lazily): the loss, the held-out KL, the learning
rate schedule and which parameters train (full fine-tuning or LoRA, :mod:`variants.lora`).

Loss per token = KL(teacher || student) of the next-token distributions (temperature 1) over
prompt and answer tokens, plus ``ce_weight`` x cross-entropy on the teacher's greedy answer
tokens; bf16 autocast where the CPU has AMX and on CUDA, fp32 master weights.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from variants import lora
from variants.builder import VariantError, decoder_layers


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant (step is 0-based)."""
    return lr * min(1.0, (step + 1) / max(1, warmup))


def torch_device(name: str) -> Any:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu`` or ``cuda`` as a ``torch.device``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: Any) -> Any:
    """bf16 autocast on CUDA and on CPUs with AMX (``HEAL_NO_AUTOCAST=1`` turns it off), else no-op."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and _cpu_has_amx() and os.environ.get("HEAL_NO_AUTOCAST") != "1":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def collate(items: list[tuple[list[int], int]], pad: int, device: Any) -> tuple[Any, Any, Any]:
    """A padded batch of (token ids, answer start) sequences: ids, the scored positions, the answer positions."""
    import torch

    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    valid = torch.zeros((len(items), width), dtype=torch.bool)  # positions whose next token is scored
    answer = torch.zeros((len(items), width), dtype=torch.bool)  # positions predicting an answer token
    for r, (seq, start) in enumerate(items):
        ids[r, : len(seq)] = torch.tensor(seq)
        valid[r, : len(seq) - 1] = True
        answer[r, max(0, start - 1) : len(seq) - 1] = True
    return ids.to(device), valid.to(device), answer.to(device)


def distill_loss(
    student: Any, teacher: Any, batch: tuple[Any, Any, Any], ce_weight: float, device: Any
) -> tuple[Any, float, float]:
    """(loss tensor, KL value, CE value) of one batch; KL(teacher || student) per scored token."""
    import torch
    import torch.nn.functional as F

    ids, valid, answer = batch
    attention = torch.ones_like(ids)
    with autocast(device):
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=attention, use_cache=False).logits
        s_logits = student(input_ids=ids, attention_mask=attention, use_cache=False).logits
    t_logp = F.log_softmax(t_logits[valid].float(), dim=-1)
    s_logp = F.log_softmax(s_logits[valid].float(), dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    targets = ids[:, 1:][answer[:, :-1]]
    if ce_weight > 0 and targets.numel():
        s_answer = F.log_softmax(s_logits[:, :-1][answer[:, :-1]].float(), dim=-1)
        ce = F.nll_loss(s_answer, targets)
    else:
        ce = torch.zeros((), device=kl.device)
    return kl + ce_weight * ce, float(kl.detach()), float(ce.detach())


def evaluate_kl(student: Any, teacher: Any, seqs: list[tuple[list[int], int]], pad: int, device: Any) -> float:
    """Mean KL(teacher || student) over ``seqs`` (one at a time, no gradients)."""
    import torch

    if not seqs:
        return float("nan")
    student.eval()
    total = 0.0
    with torch.no_grad():
        for s in seqs:
            total += distill_loss(student, teacher, collate([s], pad, device), 0.0, device)[1]
    return total / len(seqs)


def healed_layers(student: Any, variant_meta: dict[str, Any], scope: str) -> list[Any]:
    """The decoder layers that healing trains under ``scope`` (``all`` or ``from-gap``).

    ``from-gap``: from the layer just before the first removed one up (all layers when nothing
    was removed or the metadata does not say).
    """
    if scope not in ("all", "from-gap"):
        raise VariantError(f"--train-layers must be all or from-gap, got {scope!r}")
    layers = list(decoder_layers(student))
    dropped = [int(d["layer"]) for d in variant_meta.get("dropped", [])]
    if scope == "all" or not dropped:
        return layers
    return layers[max(0, min(dropped) - 1) :]


def trainable_parameters(
    student: Any, variant_meta: dict[str, Any], scope: str, lora_rank: int = 0, lora_alpha: float = 32.0
) -> list[str]:
    """Freeze what healing leaves alone; return the names of the trainable parameters.

    Full fine-tuning (``lora_rank`` 0): ``all`` trains every parameter; ``from-gap`` trains the
    :func:`healed_layers` plus the final norm, while embeddings (tied with the output head in
    SmolLM2/Qwen) and the untouched bottom layers stay frozen, so backward stops early (about half
    the compute of ``all`` when the first gap is mid-model). With ``lora_rank`` > 0 every weight is
    frozen and only rank-``lora_rank`` adapters on the projections of those layers train
    (:mod:`variants.lora`).
    """
    layers = healed_layers(student, variant_meta, scope)
    if lora_rank > 0:
        for p in student.parameters():
            p.requires_grad_(False)
        lora.attach(layers, lora_rank, lora_alpha)
    elif scope == "from-gap" and variant_meta.get("dropped"):
        for p in student.parameters():
            p.requires_grad_(False)
        for layer in layers:
            for p in layer.parameters():
                p.requires_grad_(True)
        norm = getattr(student.model, "norm", None)
        if norm is not None:
            for p in norm.parameters():
                p.requires_grad_(True)
    return [n for n, p in student.named_parameters() if p.requires_grad]
