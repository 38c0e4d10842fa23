"""Heal a layer-pruned variant by knowledge distillation from its full model: the torch side of
``make-variant --heal`` and ``heal-variant``.

Runs in the backend environment (torch + transformers), never in the gateway process;
``llm-gateway make-variant --heal`` and ``heal-variant`` (:mod:`lab.variant`) run it with the backend
venv's Python::

    vllm-venv/bin/python -m variants heal --teacher FULL --variant PRUNED --out DST \\
        --healing-json prompts.json --steps 300 --seq-len 320 --batch-size 4 --lr 5e-5 --seed 0

From Python: ``heal(teacher, variant, out, prompts, HealConfig(steps=300))``. At the top level it
imports only the standard library (torch is imported when healing starts). Steps:

1. **Healing text** (:mod:`variants.heal_data`). The teacher (full model) answers every healing
   prompt greedily once (cached, shared by the variants of one model); a training sequence is the
   chat-templated prompt followed by the teacher's answer token ids, cut to ``--seq-len``.
2. **Distillation** (:mod:`variants.distill`). Loss per token = KL(teacher || student) of the next-token distributions
   (temperature 1) over prompt and answer tokens, plus ``--ce-weight`` x cross-entropy on the
   teacher's greedy answer tokens. AdamW, linear warm-up then constant learning rate (so a run
   can be extended by resuming with more ``--steps``), gradient clipping at 1.0, bf16 autocast
   where the CPU has AMX / on CUDA, fp32 master weights. ``--lora-rank R`` trains rank-R adapters
   on the healed layers' projections instead of the weights (:mod:`variants.lora`) and merges them
   into the weights before writing, so the output has the same shape either way.
3. **Determinism.** ``torch.manual_seed(seed)``; the batch of step *s* is a fixed function of
   (seed, s) (a seeded permutation per epoch), so a resumed run sees the same data as an
   uninterrupted one.
4. **Checkpoints** (:mod:`variants.checkpoint`) every ``--save-every`` steps and on Ctrl-C /
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
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from variants import lora
from variants.builder import (
    METADATA_FILE,
    SmokeTestFailed,
    VariantError,
    copy_side_files,
    failed_tests,
    smoke_report,
    smoke_test,
)
from variants.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_META,
    StopFlag,
    load_checkpoint,
    save_checkpoint,
    sha256_json,
    weights_sha256,
)
from variants.distill import collate, distill_loss, evaluate_kl, lr_at, torch_device, trainable_parameters
from variants.heal_config import HealConfig
from variants.heal_data import (
    batch_indices,
    load_or_make_answers,
    make_sequences,
    split_held_out,
    stop_ids,
    unfinished_answers,
)
from variants.progress import progress

EXIT_INTERRUPTED = 130
Log = Callable[[str], Any]


@dataclass
class _Models:
    name: str  # the variant's folder name
    tokenizer: Any
    teacher: Any
    student: Any
    tie: bool
    variant_meta: dict[str, Any]
    trainable: list[str]


@dataclass
class _Data:
    answers_cache: str
    prompts: int
    unfinished: int
    train: list[tuple[list[int], int]]
    held: list[tuple[list[int], int]]
    pad: int
    fingerprint: dict[str, Any]


@dataclass
class _Progress:
    """Where training stands: restored from a checkpoint or fresh."""

    step: int = 0
    history: list[list[float]] = field(default_factory=list)
    kl_before: float = float("nan")
    wall_before: float = 0.0


def _check_output(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise VariantError(f"{out_dir} exists and is not empty (use --force to replace it)")


def _load_models(teacher_dir: Path, variant_dir: Path, config: HealConfig) -> _Models:
    """Seed torch, load tokenizer, teacher and student (float32, on the CPU), check they belong together,
    and freeze what healing leaves alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta_path = variant_dir / METADATA_FILE
    variant_meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(variant_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(variant_dir, dtype=torch.float32)
    tie = bool(getattr(student.config, "tie_word_embeddings", False))
    if tie != bool(getattr(teacher.config, "tie_word_embeddings", False)):
        raise VariantError("teacher and variant disagree on tie_word_embeddings: is the variant from this teacher?")
    if student.config.vocab_size != teacher.config.vocab_size:
        sizes = f"teacher {teacher.config.vocab_size}, variant {student.config.vocab_size}"
        raise VariantError(f"vocab sizes differ: {sizes}")
    trainable = trainable_parameters(student, variant_meta, config.train_layers, config.lora_rank, config.lora_alpha)
    return _Models(variant_dir.name, tokenizer, teacher, student, tie, variant_meta, trainable)


def _prepare_data(
    teacher_dir: Path,
    variant_dir: Path,
    prompts: list[dict[str, Any]],
    m: _Models,
    config: HealConfig,
    cache: Path,
    log: Log,
) -> _Data:
    """The teacher's answers (cached), the training and held-out sequences, and the run's fingerprint."""
    answers, cache_file = load_or_make_answers(
        teacher_dir, m.teacher, m.tokenizer, prompts, config.answer_tokens, cache, log
    )
    seqs = make_sequences(answers, config.seq_len)
    unfinished = unfinished_answers(answers, seqs, stop_ids(m.teacher, m.tokenizer))
    if unfinished * 4 > len(answers):
        log(
            f"==> note: {unfinished} of {len(answers)} sequences end before their answer does (cut at "
            f"--answer-tokens {config.answer_tokens} or --seq-len {config.seq_len}); the student does not learn "
            "where those answers end: raise both for tasks with long answers"
        )
    train_idx, held_idx = split_held_out(len(seqs))
    tok = m.tokenizer
    fingerprint = {
        "teacher": weights_sha256(teacher_dir),
        "variant": weights_sha256(variant_dir),
        "data_sha256": sha256_json([s[0] for s in seqs]),
        **config.settings(),
    }
    return _Data(
        answers_cache=cache_file,
        prompts=len(prompts),
        unfinished=unfinished,
        train=[seqs[i] for i in train_idx],
        held=[seqs[i] for i in held_idx],
        pad=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        fingerprint=fingerprint,
    )


def _restore(work: Path, m: _Models, d: _Data, optimizer: Any, config: HealConfig, dev: Any, log: Log) -> _Progress:
    """Resume from the checkpoint in ``work`` when it matches this run (``restart`` discards it), else
    measure the pruned model's held-out KL and start at step 0."""
    import torch

    state = None if config.restart else load_checkpoint(work, d.fingerprint)
    if config.restart:
        for name in (CHECKPOINT, CHECKPOINT_META):
            (work / name).unlink(missing_ok=True)
    if state is not None:
        m.student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        log(f"==> resuming from {work / CHECKPOINT} at step {state['step']}/{config.steps}")
        return _Progress(state["step"], state["history"], state["held_out_kl_before"], state["wall_s"])
    kl_before = evaluate_kl(m.student, m.teacher, d.held, d.pad, dev)
    log(f"==> held-out KL(teacher || pruned) before healing: {kl_before:.4f} ({len(d.held)} sequences)")
    return _Progress(kl_before=kl_before)


def _train(
    m: _Models,
    d: _Data,
    config: HealConfig,
    work: Path,
    dev: Any,
    t0: float,
    *,
    stop_after: int | None,
    progress: bool,
    log: Log,
) -> _Progress:
    """The optimisation loop: AdamW, warm-up, clipping at 1.0, a checkpoint every ``save_every`` steps,
    at the end and when stopped (then :class:`KeyboardInterrupt`)."""
    import torch

    params = [p for p in m.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    run = _restore(work, m, d, optimizer, config, dev, log)
    log(f"    training {len(m.trainable)} tensors ({config.train_layers})")
    log(
        f"==> healing {m.name}: {config.steps} steps x {config.batch_size} sequences of <= {config.seq_len} "
        f"tokens, lr {config.lr}, ce-weight {config.ce_weight}, {len(d.train)} training sequences, device {dev}"
    )

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "model": m.student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "history": run.history,
            "held_out_kl_before": run.kl_before,
            "wall_s": run.wall_before + time.monotonic() - t0,
        }

    bar = _progress(run.step, config.steps, progress)
    try:
        with StopFlag() as stop:
            while run.step < config.steps:
                m.student.train()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(run.step, config.lr, config.warmup)
                picked = batch_indices(len(d.train), config.batch_size, run.step, config.seed)
                batch = collate([d.train[i] for i in picked], d.pad, dev)
                loss, kl, ce = distill_loss(m.student, m.teacher, batch, config.ce_weight, dev)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                run.step += 1
                run.history.append([run.step, round(float(loss.detach()), 5), round(kl, 5), round(ce, 5)])
                bar(run.step, float(loss.detach()), kl)
                interrupted = stop.set or (stop_after is not None and run.step >= stop_after)
                if run.step % config.save_every == 0 or run.step == config.steps or interrupted:
                    save_checkpoint(work, snapshot(run.step), d.fingerprint)
                if interrupted:
                    where = f"{work / CHECKPOINT} at step {run.step}/{config.steps}"
                    log(f"==> saved {where}; rerun the same command to resume")
                    raise KeyboardInterrupt
    finally:
        bar(None, 0.0, 0.0)
    return run


def _method(config: HealConfig) -> str:
    return (
        "knowledge distillation: KL(teacher || student) on next-token distributions"
        + (f" + {config.ce_weight} x CE on the teacher's greedy answers" if config.ce_weight > 0 else "")
        + (
            f"; LoRA rank {config.lora_rank}, alpha {config.lora_alpha:g} on {', '.join(lora.TARGETS)}, "
            "merged into the weights"
            if config.lora_rank
            else "; full fine-tuning"
        )
    )


def _healing_record(
    teacher_dir: Path,
    variant_dir: Path,
    prompts: list[dict[str, Any]],
    d: _Data,
    run: _Progress,
    config: HealConfig,
    *,
    trainable: int,
    device: str,
    kl_after: float,
    wall: float,
    smoke: Any,
) -> dict[str, Any]:
    """The ``healing`` section of the written ``variant.json``."""
    tail = run.history[-min(len(run.history), 20) :]
    final_loss = sum(h[1] for h in tail) / len(tail) if tail else float("nan")
    return {
        "method": _method(config),
        "teacher": str(teacher_dir.resolve()),
        "pruned_variant": str(variant_dir.resolve()),
        "task": config.task,
        "data": {
            "source": config.data_source,
            "prompts": len(prompts),
            "prompts_sha256": sha256_json([p["messages"] for p in prompts]),
            "ids": [p.get("id") for p in prompts],
            "teacher_answer_tokens": config.answer_tokens,
            "unfinished_answers": d.unfinished,
            "healing_data_sha256": d.fingerprint["data_sha256"],
            "answers_cache": d.answers_cache,
            "train_sequences": len(d.train),
            "held_out_sequences": len(d.held),
            "train_tokens_per_epoch": sum(len(s[0]) for s in d.train),
        },
        "steps": run.step,
        **config.settings(),
        "trainable_parameters": trainable,
        "device": device,
        "final_loss": round(final_loss, 5),
        "initial_loss": run.history[0][1] if run.history else None,
        "held_out_kl_before": round(run.kl_before, 5),
        "held_out_kl_after": round(kl_after, 5),
        "wall_s": round(wall, 1),
        "loss_curve": [h for h in run.history if h[0] % max(1, config.steps // 50) == 0 or h[0] == run.step],
        "smoke_test": smoke,
    }


def _write(out_dir: Path, variant_dir: Path, m: _Models, meta: dict[str, Any]) -> None:
    """Save the healed student in the source dtype with the variant's side files, replacing ``out_dir``."""
    import torch

    source_dtype = str(
        m.variant_meta.get("dtype") or json.loads((variant_dir / "config.json").read_text()).get("dtype")
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy_side_files(variant_dir, tmp)
    m.student.to(getattr(torch, source_dtype)).save_pretrained(tmp)
    saved = json.loads((tmp / "config.json").read_text())
    if bool(saved.get("tie_word_embeddings", False)) != m.tie:
        raise VariantError(f"saved config flipped tie_word_embeddings (source {m.tie}): {saved}")
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def heal(
    teacher_dir: Path,
    variant_dir: Path,
    out_dir: Path,
    prompts: list[dict[str, Any]],
    config: HealConfig | None = None,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Distil ``teacher_dir`` into the pruned ``variant_dir``; write the healed variant to ``out_dir``.

    Returns the written ``variant.json``. Raises :class:`VariantError` for bad input,
    :class:`CheckpointError` for a corrupted/mismatched checkpoint, :class:`SmokeTestFailed` if the
    healed model fails its smoke test (unless ``config.allow_failing_smoke``) and
    :class:`KeyboardInterrupt` after saving when interrupted. ``stop_after`` (tests) stops like an
    interrupt after that step; ``progress`` draws a bar on stderr; ``log`` receives the messages.
    """
    config = config or HealConfig()
    config.validate()
    if len(prompts) < 2:
        raise VariantError("healing needs at least 2 prompts")
    _check_output(out_dir, config.force)
    work = config.work_dir or out_dir.with_name(out_dir.name + ".heal-work")
    dev = torch_device(config.device)
    t0 = time.monotonic()
    m = _load_models(teacher_dir, variant_dir, config)
    d = _prepare_data(teacher_dir, variant_dir, prompts, m, config, config.cache_dir or work, log)
    m.teacher.to(dev)
    m.student.to(dev)
    run = _train(m, d, config, work, dev, t0, stop_after=stop_after, progress=progress, log=log)

    kl_after = evaluate_kl(m.student, m.teacher, d.held, d.pad, dev)
    wall = run.wall_before + time.monotonic() - t0
    log(f"==> held-out KL after healing: {kl_after:.4f} (before {run.kl_before:.4f}); wall {wall:.0f} s")
    trainable = sum(p.numel() for p in m.student.parameters() if p.requires_grad)
    m.student.to("cpu")
    if config.lora_rank:
        log(f"    merged {lora.merge(m.student)} LoRA adapters into the weights")
    healed_smoke = smoke_test(m.student, m.tokenizer) if config.smoke else None
    if healed_smoke is not None:
        for line in smoke_report({"healed": healed_smoke}):
            log(line)
    healing = _healing_record(
        teacher_dir,
        variant_dir,
        prompts,
        d,
        run,
        config,
        trainable=trainable,
        device=str(dev),
        kl_after=kl_after,
        wall=wall,
        smoke=healed_smoke,
    )
    meta = {**m.variant_meta, "healing": healing}
    source_smoke = m.variant_meta.get("smoke_test", {}).get("source")
    meta["smoke_test"] = {**m.variant_meta.get("smoke_test", {}), "source": source_smoke, "healed": healed_smoke}
    if healed_smoke is not None and not healed_smoke["passed"] and not config.allow_failing_smoke:
        raise SmokeTestFailed(
            f"the healed variant failed its smoke test: {failed_tests(healed_smoke)}; not written to {out_dir}. "
            f"Heal longer (rerun with more --steps: it resumes from {work}), "
            "drop fewer layers, or pass --allow-failing-smoke to write it anyway"
        )
    _write(out_dir, variant_dir, m, meta)
    log(f"==> wrote {out_dir} (healed, {run.step} steps, final loss {healing['final_loss']:.4f})")
    return meta


def _progress(start: int, total: int, enabled: bool) -> Any:
    """A callback ``(step, loss, kl)`` drawing a progress bar on stderr; ``step=None`` closes it."""
    bar = progress(total, "healing", "step", initial=start, disable=not enabled)

    def update(step: int | None, loss: float, kl: float) -> None:
        if step is None:
            bar.close()
            return
        bar.set_postfix_str(f"loss={loss:.4f}, kl={kl:.4f}", refresh=False)
        bar.update(step - bar.n)

    return update


def build_parser() -> argparse.ArgumentParser:
    """``python -m variants heal``'s arguments: one per :class:`HealConfig` field, plus the inputs."""
    defaults = HealConfig()
    parser = argparse.ArgumentParser(
        prog="python -m variants heal", description="Heal a layer-pruned variant by distillation from its full model."
    )
    parser.add_argument("--teacher", required=True, type=Path, help="the full (source) model")
    parser.add_argument("--variant", required=True, type=Path, help="the pruned variant (make-variant output)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--healing-json", required=True, type=Path, help='{"source": ..., "prompts": [...]}')
    parser.add_argument("--task", default=defaults.task)
    for name in ("steps", "seq_len", "batch_size", "warmup", "answer_tokens", "save_every", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "ce_weight"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--train-layers", default=defaults.train_layers, choices=["from-gap", "all"])
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0: full fine-tuning)")
    parser.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA scale numerator (scale = alpha / rank)")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--allow-failing-smoke", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m variants heal``: 0 healed, 2 bad input, 3 smoke test failed, 130 interrupted."""
    args = build_parser().parse_args(argv)
    data = json.loads(args.healing_json.read_text())
    given = {f.name: getattr(args, f.name) for f in fields(HealConfig) if hasattr(args, f.name)}
    config = HealConfig(**{**given, "data_source": data.get("source", str(args.healing_json))})
    try:
        heal(args.teacher, args.variant, args.out, data["prompts"], config, progress=not args.no_progress)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SmokeTestFailed as exc:
        print(f"heal-variant: {exc}", file=sys.stderr)
        return 3
    except VariantError as exc:
        print(f"heal-variant: {exc}", file=sys.stderr)
        return 2
    return 0
