"""Heal a layer-pruned variant by knowledge distillation from its full model: the torch side of
``make-variant --heal`` and ``heal-variant``.

Runs in the backend environment (torch + transformers), never in the gateway process; the
gateway's CLI runs this file as a script with the backend venv's Python::

    vllm-venv/bin/python gateway/variant_healer.py --teacher FULL --variant PRUNED --out DST \\
        --healing-json prompts.json --steps 300 --seq-len 320 --batch-size 4 --lr 5e-5 --seed 0

At the top level it imports only the standard library (plus the builder's pure helpers). Steps:

1. **Healing text** (:mod:`gateway.heal_data`). The teacher (full model) answers every healing
   prompt greedily once (cached, shared by the variants of one model); a training sequence is the
   chat-templated prompt followed by the teacher's answer token ids, cut to ``--seq-len``.
2. **Distillation.** Loss per token = KL(teacher || student) of the next-token distributions
   (temperature 1) over prompt and answer tokens, plus ``--ce-weight`` x cross-entropy on the
   teacher's greedy answer tokens. AdamW, linear warm-up then constant learning rate (so a run
   can be extended by resuming with more ``--steps``), gradient clipping at 1.0, bf16 autocast
   where the CPU has AMX / on CUDA, fp32 master weights. ``--lora-rank R`` trains rank-R adapters
   on the healed layers' projections instead of the weights (:mod:`gateway.lora`) and merges them
   into the weights before writing, so the output has the same shape either way.
3. **Determinism.** ``torch.manual_seed(seed)``; the batch of step *s* is a fixed function of
   (seed, s) (a seeded permutation per epoch), so a resumed run sees the same data as an
   uninterrupted one.
4. **Checkpoints** (:mod:`gateway.heal_checkpoint`) every ``--save-every`` steps and on Ctrl-C /
   SIGTERM (the current step is finished first, then the process exits 130) in
   ``<out>.heal-work/checkpoint.pt`` with a sha256 sidecar; a rerun with the same inputs resumes.
   A checkpoint whose sha256 does not match (corrupted) or whose fingerprint (teacher, variant
   weights, data, seed, batch, seq-len, lr, loss) differs from this run's is refused with a clear
   message (``--restart`` discards it).
5. **Output.** A standard Hugging Face checkpoint in the source dtype (``tie_word_embeddings`` as
   in the source: a tied model stays tied), the variant's side files, and ``variant.json`` with a
   ``healing`` section (teacher, data hashes, steps, losses, held-out KL before/after, wall time).
   The healed variant must pass the builder's smoke tests, or nothing is written
   (``--allow-failing-smoke`` writes it anyway); the checkpoint is kept so more steps can follow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``gateway`` importable for the builder helpers
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import lora
from gateway.heal_checkpoint import (
    CHECKPOINT,
    CHECKPOINT_META,
    StopFlag,
    load_checkpoint,
    save_checkpoint,
    sha256_json,
    weights_sha256,
)
from gateway.heal_data import (
    batch_indices,
    load_or_make_answers,
    make_sequences,
    split_held_out,
    stop_ids,
    unfinished_answers,
)
from gateway.variant_builder import (
    METADATA_FILE,
    SmokeTestFailed,
    VariantError,
    copy_side_files,
    decoder_layers,
    failed_tests,
    smoke_report,
    smoke_test,
)

EXIT_INTERRUPTED = 130


# -- pure helpers ---------------------------------------------------------------------------------


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant (step is 0-based)."""
    return lr * min(1.0, (step + 1) / max(1, warmup))


# -- torch side -----------------------------------------------------------------------------------


def torch_device(name: str) -> Any:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu`` or ``cuda`` as a ``torch.device``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: Any) -> Any:
    """bf16 autocast on CUDA and on CPUs with AMX (``HEAL_NO_AUTOCAST=1`` turns it off), else no-op."""
    import contextlib

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


def _collate(items: list[tuple[list[int], int]], pad: int, device: Any) -> tuple[Any, Any, Any]:
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
            total += distill_loss(student, teacher, _collate([s], pad, device), 0.0, device)[1]
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
    (:mod:`gateway.lora`).
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


# -- the healing run ------------------------------------------------------------------------------


def heal(
    teacher_dir: Path,
    variant_dir: Path,
    out_dir: Path,
    prompts: list[dict[str, Any]],
    *,
    steps: int = 200,
    seq_len: int = 320,
    batch_size: int = 4,
    lr: float = 5e-5,
    warmup: int = 20,
    seed: int = 0,
    ce_weight: float = 0.5,
    train_layers: str = "from-gap",
    lora_rank: int = 0,
    lora_alpha: float = 32.0,
    answer_tokens: int = 192,
    save_every: int = 25,
    task: str = "mixed",
    data_source: str = "",
    cache_dir: Path | None = None,
    work_dir: Path | None = None,
    device: str = "auto",
    allow_failing_smoke: bool = False,
    smoke: bool = True,
    restart: bool = False,
    force: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Distil ``teacher_dir`` into the pruned ``variant_dir``; write the healed variant to ``out_dir``.

    Returns the written ``variant.json``. Raises :class:`VariantError` for bad input,
    :class:`CheckpointError` for a corrupted/mismatched checkpoint, :class:`SmokeTestFailed` if the
    healed model fails its smoke test (unless ``allow_failing_smoke``) and :class:`KeyboardInterrupt`
    after saving when interrupted. ``stop_after`` (tests) stops like an interrupt after that step.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name, value in (("steps", steps), ("seq-len", seq_len), ("batch-size", batch_size), ("save-every", save_every)):
        if value < 1:
            raise VariantError(f"--{name} must be >= 1, got {value}")
    if not lr > 0:
        raise VariantError(f"--lr must be > 0, got {lr}")
    if len(prompts) < 2:
        raise VariantError("healing needs at least 2 prompts")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise VariantError(f"{out_dir} exists and is not empty (use --force to replace it)")
    variant_meta_path = variant_dir / METADATA_FILE
    variant_meta = json.loads(variant_meta_path.read_text()) if variant_meta_path.exists() else {}
    work = work_dir or out_dir.with_name(out_dir.name + ".heal-work")
    cache = cache_dir or work
    dev = torch_device(device)
    t0 = time.monotonic()

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(variant_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(variant_dir, dtype=torch.float32)
    tie = bool(getattr(student.config, "tie_word_embeddings", False))
    if tie != bool(getattr(teacher.config, "tie_word_embeddings", False)):
        raise VariantError("teacher and variant disagree on tie_word_embeddings: is the variant from this teacher?")
    if student.config.vocab_size != teacher.config.vocab_size:
        sizes = f"teacher {teacher.config.vocab_size}, variant {student.config.vocab_size}"
        raise VariantError(f"vocab sizes differ: {sizes}")
    if lora_rank < 0 or (lora_rank > 0 and not lora_alpha > 0):
        raise VariantError(f"--lora-rank must be >= 0 and --lora-alpha > 0, got {lora_rank} and {lora_alpha}")
    trainable = trainable_parameters(student, variant_meta, train_layers, lora_rank, lora_alpha)

    answers, cache_file = load_or_make_answers(teacher_dir, teacher, tokenizer, prompts, answer_tokens, cache, log)
    teacher.to(dev)
    student.to(dev)
    seqs = make_sequences(answers, seq_len)
    unfinished = unfinished_answers(answers, seqs, stop_ids(teacher, tokenizer))
    if unfinished * 4 > len(answers):
        log(
            f"==> note: {unfinished} of {len(answers)} sequences end before their answer does (cut at "
            f"--answer-tokens {answer_tokens} or --seq-len {seq_len}); the student does not learn where "
            "those answers end: raise both for tasks with long answers"
        )
    train_idx, held_idx = split_held_out(len(seqs))
    train, held = [seqs[i] for i in train_idx], [seqs[i] for i in held_idx]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # the run's settings: part of the checkpoint fingerprint and of the written metadata
    settings = {
        "seed": seed,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "lr": lr,
        "warmup": warmup,
        "ce_weight": ce_weight,
        "train_layers": train_layers,
        **({"lora_rank": lora_rank, "lora_alpha": lora_alpha} if lora_rank else {}),
    }
    fingerprint = {
        "teacher": weights_sha256(teacher_dir),
        "variant": weights_sha256(variant_dir),
        "data_sha256": sha256_json([s[0] for s in seqs]),
        **settings,
    }

    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    state = None if restart else load_checkpoint(work, fingerprint)
    if restart:
        for name in (CHECKPOINT, CHECKPOINT_META):
            (work / name).unlink(missing_ok=True)
    if state is not None:
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history, kl_before = state["step"], state["history"], state["held_out_kl_before"]
        wall_before = state["wall_s"]
        log(f"==> resuming from {work / CHECKPOINT} at step {start}/{steps}")
    else:
        start, history, wall_before = 0, [], 0.0
        kl_before = evaluate_kl(student, teacher, held, pad, dev)
        log(f"==> held-out KL(teacher || pruned) before healing: {kl_before:.4f} ({len(held)} sequences)")
    log(f"    training {len(trainable)} tensors ({train_layers})")
    log(
        f"==> healing {variant_dir.name}: {steps} steps x {batch_size} sequences of <= {seq_len} tokens, "
        f"lr {lr}, ce-weight {ce_weight}, {len(train)} training sequences, device {dev}"
    )

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
            "held_out_kl_before": kl_before,
            "wall_s": wall_before + time.monotonic() - t0,
        }

    bar = _progress(start, steps, progress)
    step = start
    try:
        with StopFlag() as stop:
            while step < steps:
                student.train()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, lr, warmup)
                batch = _collate([train[i] for i in batch_indices(len(train), batch_size, step, seed)], pad, dev)
                loss, kl, ce = distill_loss(student, teacher, batch, ce_weight, dev)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                step += 1
                history.append([step, round(float(loss.detach()), 5), round(kl, 5), round(ce, 5)])
                bar(step, float(loss.detach()), kl)
                interrupted = stop.set or (stop_after is not None and step >= stop_after)
                if step % save_every == 0 or step == steps or interrupted:
                    save_checkpoint(work, snapshot(step), fingerprint)
                if interrupted:
                    log(f"==> saved {work / CHECKPOINT} at step {step}/{steps}; rerun the same command to resume")
                    raise KeyboardInterrupt
    finally:
        bar(None, 0.0, 0.0)

    kl_after = evaluate_kl(student, teacher, held, pad, dev)
    wall = wall_before + time.monotonic() - t0
    tail = history[-min(len(history), 20) :]
    final_loss = sum(h[1] for h in tail) / len(tail) if tail else float("nan")
    log(f"==> held-out KL after healing: {kl_after:.4f} (before {kl_before:.4f}); wall {wall:.0f} s")

    trainable_count = sum(p.numel() for p in student.parameters() if p.requires_grad)
    student.to("cpu")
    if lora_rank:
        log(f"    merged {lora.merge(student)} LoRA adapters into the weights")
    source_smoke = variant_meta.get("smoke_test", {}).get("source")
    healed_smoke = smoke_test(student, tokenizer) if smoke else None
    if healed_smoke is not None:
        for line in smoke_report({"healed": healed_smoke}):
            log(line)
    source_dtype = str(variant_meta.get("dtype") or json.loads((variant_dir / "config.json").read_text()).get("dtype"))
    healing = {
        "method": "knowledge distillation: KL(teacher || student) on next-token distributions"
        + (f" + {ce_weight} x CE on the teacher's greedy answers" if ce_weight > 0 else "")
        + (
            f"; LoRA rank {lora_rank}, alpha {lora_alpha:g} on {', '.join(lora.TARGETS)}, merged into the weights"
            if lora_rank
            else "; full fine-tuning"
        ),
        "teacher": str(teacher_dir.resolve()),
        "pruned_variant": str(variant_dir.resolve()),
        "task": task,
        "data": {
            "source": data_source,
            "prompts": len(prompts),
            "prompts_sha256": sha256_json([p["messages"] for p in prompts]),
            "ids": [p.get("id") for p in prompts],
            "teacher_answer_tokens": answer_tokens,
            "unfinished_answers": unfinished,
            "healing_data_sha256": fingerprint["data_sha256"],
            "answers_cache": cache_file,
            "train_sequences": len(train),
            "held_out_sequences": len(held),
            "train_tokens_per_epoch": sum(len(s[0]) for s in train),
        },
        "steps": step,
        **settings,
        "trainable_parameters": trainable_count,
        "device": str(dev),
        "final_loss": round(final_loss, 5),
        "initial_loss": history[0][1] if history else None,
        "held_out_kl_before": round(kl_before, 5),
        "held_out_kl_after": round(kl_after, 5),
        "wall_s": round(wall, 1),
        "loss_curve": [h for h in history if h[0] % max(1, steps // 50) == 0 or h[0] == step],
        "smoke_test": healed_smoke,
    }
    meta = {**variant_meta, "healing": healing}
    meta["smoke_test"] = {**variant_meta.get("smoke_test", {}), "source": source_smoke, "healed": healed_smoke}
    if healed_smoke is not None and not healed_smoke["passed"] and not allow_failing_smoke:
        raise SmokeTestFailed(
            f"the healed variant failed its smoke test: {failed_tests(healed_smoke)}; not written to {out_dir}. "
            f"Heal longer (rerun with more --steps: it resumes from {work}), "
            "drop fewer layers, or pass --allow-failing-smoke to write it anyway"
        )

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy_side_files(variant_dir, tmp)
    student.to(getattr(torch, source_dtype)).save_pretrained(tmp)
    saved = json.loads((tmp / "config.json").read_text())
    if bool(saved.get("tie_word_embeddings", False)) != tie:
        raise VariantError(f"saved config flipped tie_word_embeddings (source {tie}): {saved}")
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(f"==> wrote {out_dir} (healed, {step} steps, final loss {final_loss:.4f})")
    return meta


def _progress(start: int, total: int, enabled: bool) -> Any:
    """A callback ``(step, loss, kl)`` drawing a tqdm bar on stderr; ``step=None`` closes it."""
    if not enabled:
        return lambda *_: None
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar = tqdm(total=total, initial=start, desc="healing", unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(step: int | None, loss: float, kl: float) -> None:
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", kl=f"{kl:.4f}")

    return update


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Heal a layer-pruned variant by distillation from its full model.")
    parser.add_argument("--teacher", required=True, type=Path, help="the full (source) model")
    parser.add_argument("--variant", required=True, type=Path, help="the pruned variant (make-variant output)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--healing-json", required=True, type=Path, help='{"source": ..., "prompts": [...]}')
    parser.add_argument("--task", default="mixed")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ce-weight", type=float, default=0.5)
    parser.add_argument("--train-layers", default="from-gap", choices=["from-gap", "all"])
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0: full fine-tuning)")
    parser.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA scale numerator (scale = alpha / rank)")
    parser.add_argument("--answer-tokens", type=int, default=192)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--allow-failing-smoke", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    data = json.loads(args.healing_json.read_text())
    try:
        heal(
            args.teacher,
            args.variant,
            args.out,
            data["prompts"],
            steps=args.steps,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            seed=args.seed,
            ce_weight=args.ce_weight,
            train_layers=args.train_layers,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            answer_tokens=args.answer_tokens,
            save_every=args.save_every,
            task=args.task,
            data_source=data.get("source", str(args.healing_json)),
            cache_dir=args.cache_dir,
            work_dir=args.work_dir,
            device=args.device,
            allow_failing_smoke=args.allow_failing_smoke,
            restart=args.restart,
            force=args.force,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SmokeTestFailed as exc:
        print(f"heal-variant: {exc}", file=sys.stderr)
        return 3
    except VariantError as exc:
        print(f"heal-variant: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
