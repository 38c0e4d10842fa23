"""``llm-gateway make-variant``: build a layer-pruned model variant that vLLM serves unmodified.

The lab side of the command, torch-free: it picks the calibration prompts (the *train*
split of :mod:`lab.datasets`, or a JSONL file), writes them to a JSON file and runs
``python -m variants build`` (:mod:`variants.builder`) with the backend environment's Python,
which has torch and transformers; the gateway's own environment never needs them. The builder
scores layers by Block Influence, drops the least important, smoke-tests and writes the
checkpoint plus ``variant.json``; a variant that fails the smoke test is refused (exit 3) unless
``--allow-failing-smoke``.

``make-variant --heal`` then heals the pruned model by distillation from the full one
(``python -m variants heal``, :mod:`variants.healer`): the pruned model goes to ``<out>.heal-work/pruned`` (smoke test
not enforced there), the healed one to ``<out>`` (smoke test enforced). ``heal-variant`` heals an
existing pruned variant. Healing prompts are train-split items of ``--task`` (or ``--heal-file``);
rerunning the same command resumes from the last checkpoint in ``<out>.heal-work``.

Calibration file format (``--calibration-file``): JSONL, one prompt a line, either
``{"messages": [{"role": "user", "content": ...}, ...]}`` or ``{"prompt": "..."}`` (an optional
``"id"`` is recorded). Plain-text lines are taken as single user prompts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lab.datasets import TASKS, load_prompts

BUILD = ("-m", "variants", "build")  # the backend Python's arguments before the builder's own (variants.builder)
HEAL = ("-m", "variants", "heal")  # ... and before the healer's (variants.healer)
HEAL_TASKS = {**{t: [t] for t in TASKS}, "mixed": list(TASKS)}
# name -> (type, default, minimum (inclusive), help)
HEAL_OPTIONS: dict[str, tuple[type, float, float, str]] = {
    "steps": (int, 200, 1, "optimizer steps (a rerun with more steps continues from the checkpoint)"),
    "seq_len": (int, 320, 16, "tokens per training sequence (prompt + teacher answer)"),
    "batch_size": (int, 4, 1, "sequences per step"),
    "lr": (float, 5e-5, 1e-12, "AdamW learning rate (linear warm-up, then constant)"),
    "warmup": (int, 20, 0, "warm-up steps"),
    "ce_weight": (float, 0.5, 0.0, "weight of the cross-entropy on the teacher's greedy answers (0: KL only)"),
    "answer_tokens": (int, 192, 1, "tokens of the teacher's greedy answer per prompt"),
    "save_every": (int, 25, 1, "checkpoint every K steps"),
    "heal_samples": (int, 160, 2, "healing prompts (train split)"),
    "lora_rank": (int, 0, 0, "LoRA adapters of this rank, merged into the weights at the end (0: full fine-tuning)"),
    "lora_alpha": (float, 32.0, 1e-12, "LoRA scale numerator (scale = alpha / rank)"),
}


def calibration_from_tasks(tasks: list[str], samples: int, seed: int) -> list[dict[str, Any]]:
    """``samples`` train-split prompts spread evenly over ``tasks`` (round-robin), deterministic.

    Never uses test-split items, so a variant is never calibrated on what evaluates it.
    Raises ``ValueError`` for an unknown task and ``FileNotFoundError`` if a data package is missing.
    """
    if samples < 1:
        raise ValueError("--samples must be >= 1")
    per_task = math.ceil(samples / len(tasks))
    by_task = [load_prompts([t], per_task, seed=seed, split="train") for t in tasks]
    out: list[dict[str, Any]] = []
    for i in range(per_task):
        for prompts in by_task:
            if i < len(prompts) and len(out) < samples:
                out.append({"id": prompts[i].id, "messages": prompts[i].messages})
    return out


def calibration_from_file(path: Path, samples: int) -> list[dict[str, Any]]:
    """The first ``samples`` prompts of a JSONL or text file (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = line
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{n + 1}: expected a JSON object or a text line")
        messages = item.get("messages") or [{"role": "user", "content": str(item.get("prompt", ""))}]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise ValueError(f"{path}:{n + 1}: 'messages' must be a list of {{role, content}} objects")
        out.append({"id": item.get("id", f"{path.name}:{n + 1}"), "messages": messages})
        if len(out) == samples:
            break
    if not out:
        raise ValueError(f"{path}: no calibration prompts")
    return out


def builder_command(args: argparse.Namespace, calibration_json: Path, out: Path | None = None) -> list[str]:
    """The builder's argv; ``out`` overrides ``--out`` (``--heal`` builds into the work folder)."""
    heal = getattr(args, "heal", False)
    cmd = [str(args.python), *BUILD, "--model", str(args.model), "--out", str(out or args.out)]
    cmd += ["--drop", str(args.drop)] if args.drop is not None else ["--keep-ratio", str(args.keep_ratio)]
    cmd += ["--calibration-json", str(calibration_json), "--seed", str(args.seed), "--max-tokens", str(args.max_tokens)]
    if args.no_smoke_test:
        cmd.append("--no-smoke-test")
    if heal or getattr(args, "allow_failing_smoke", False):
        cmd.append("--allow-failing-smoke")
    if args.force or heal:
        cmd.append("--force")
    return cmd


def healer_command(args: argparse.Namespace, variant: Path, healing_json: Path) -> list[str]:
    """The healer's argv from the parsed healing options (already validated)."""
    cmd = [str(args.python), *HEAL, "--teacher", str(args.teacher), "--variant", str(variant)]
    cmd += ["--out", str(args.out), "--healing-json", str(healing_json), "--task", args.task]
    for opt in HEAL_OPTIONS:
        if opt != "heal_samples":  # used here, to pick the prompts
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    cmd += ["--seed", str(args.seed), "--work-dir", str(work_dir(Path(args.out))), "--cache-dir", str(args.cache_dir)]
    for flag in ("allow_failing_smoke", "restart", "force"):
        if getattr(args, flag, False):
            cmd.append("--" + flag.replace("_", "-"))
    return cmd


def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".heal-work")


def validate_healing(args: argparse.Namespace, healing: bool) -> None:
    """Fill healing defaults and check ranges; ``ValueError`` if invalid or given without healing."""
    given = [o for o in HEAL_OPTIONS if getattr(args, o, None) is not None]
    extra = [f for f in ("heal_file", "task", "restart") if getattr(args, f, None)]
    if not healing and (given or extra):
        names = ", ".join("--" + o.replace("_", "-") for o in given + extra)
        raise ValueError(f"{names}: healing options need --heal")
    for opt, (kind, default, minimum, _) in HEAL_OPTIONS.items():
        value = getattr(args, opt, None)
        value = kind(default) if value is None else value
        if value < minimum:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= {minimum:g}, got {value:g}")
        setattr(args, opt, value)
    if args.heal_file and args.task:
        raise ValueError("--task and --heal-file are exclusive")
    args.task = args.task or ("file" if args.heal_file else "mixed")


def healing_prompts(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """The healing prompts and a description of where they came from (train split or a file)."""
    if args.heal_file:
        return calibration_from_file(Path(args.heal_file), args.heal_samples), f"file {args.heal_file}"
    tasks = HEAL_TASKS[args.task]
    prompts = calibration_from_tasks(tasks, args.heal_samples, args.seed)
    return prompts, f"lab.datasets {','.join(tasks)} train split, seed {args.seed}"


def _run_healer(args: argparse.Namespace, variant: Path, tmp: Path) -> int:
    prompts, source = healing_prompts(args)
    healing_json = tmp / "healing.json"
    healing_json.write_text(json.dumps({"source": source, "prompts": prompts}, ensure_ascii=False))
    return _call(healer_command(args, variant, healing_json))


def _call(cmd: list[str]) -> int:
    """Run a backend script; Ctrl-C is left to the child (it saves and exits 130)."""
    proc = subprocess.Popen(cmd, env=_builder_env())
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def heal_variant_command(args: argparse.Namespace) -> int:
    """Entry point of ``heal-variant``: 0 healed, 2 bad input, 3 smoke test failed, 130 interrupted."""
    try:
        validate_healing(args, True)
        for label, path in (("--teacher", args.teacher), ("--variant", args.variant)):
            if not (Path(path) / "config.json").exists():
                raise ValueError(f"{label}: no Hugging Face checkpoint at {path}")
        if not Path(args.python).exists():
            raise ValueError(f"backend Python missing: {args.python} (run deploy/local/backend-env.sh)")
        with tempfile.TemporaryDirectory(prefix="heal-variant-") as tmp:
            return _run_healer(args, Path(args.variant), Path(tmp))
    except (ValueError, FileNotFoundError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2


def make_variant_command(args: argparse.Namespace) -> int:
    """Entry point: 0 built, 2 bad input, 3 smoke test failed, 130 interrupted, else the builder's status."""
    try:
        validate_healing(args, args.heal)
        if args.calibration_file:
            prompts = calibration_from_file(Path(args.calibration_file), args.samples)
            source = f"file {args.calibration_file}"
        else:
            tasks = [t.strip() for t in args.calibration.split(",") if t.strip()]
            unknown = sorted(set(tasks) - set(TASKS))
            if not tasks or unknown:
                raise ValueError(f"--calibration: unknown task(s) {unknown}; known: {', '.join(TASKS)}")
            prompts = calibration_from_tasks(tasks, args.samples, args.seed)
            source = f"lab.datasets {','.join(tasks)} train split, seed {args.seed}"
    except (ValueError, FileNotFoundError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    if not Path(args.python).exists():
        print(f"llm-gateway: backend Python missing: {args.python} (run deploy/local/backend-env.sh)", file=sys.stderr)
        return 2
    if not (Path(args.model) / "config.json").exists():
        print(f"llm-gateway: no Hugging Face checkpoint at {args.model}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="make-variant-") as tmp:
        calibration_json = Path(tmp) / "calibration.json"
        calibration_json.write_text(json.dumps({"source": source, "prompts": prompts}, ensure_ascii=False))
        if not args.heal:
            return _call(builder_command(args, calibration_json))
        pruned = work_dir(Path(args.out)) / "pruned"
        if (pruned / "variant.json").exists() and not args.restart:
            print(f"==> reusing the pruned model in {pruned} (--restart rebuilds it)", flush=True)
        else:
            rc = _call(builder_command(args, calibration_json, out=pruned))
            if rc:
                return rc
        args.teacher = args.model
        try:
            return _run_healer(args, pruned, Path(tmp))
        except (ValueError, FileNotFoundError) as exc:
            print(f"llm-gateway: {exc}", file=sys.stderr)
            return 2


def _builder_env() -> dict[str, str]:
    """The backend Python's environment: offline Hugging Face, and ``variants`` importable from where this
    process imports it (the backend venv does not install this project)."""
    spec = importlib.util.find_spec("variants")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the variants package is not installed (pip install 'llm-gateway[variants]')")
    root = str(Path(next(iter(spec.submodule_search_locations))).parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}


def add_make_variant_arguments(p: argparse.ArgumentParser, default_python: Path) -> None:
    """``make-variant``'s options (``default_python``: the backend environment's interpreter)."""
    p.add_argument("--model", required=True, help="source Hugging Face checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (a checkpoint plus variant.json)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--drop", type=int, help="number of decoder layers to remove")
    how.add_argument("--keep-ratio", type=float, help="fraction of decoder layers to keep, in (0, 1)")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument(
        "--calibration", default="gsm8k,mmlu,humaneval,mtbench", help="prompt sets (train split) to score layers on"
    )
    cal.add_argument("--calibration-file", help="JSONL of {messages} or {prompt} objects instead")
    p.add_argument("--samples", type=int, default=64, help="calibration prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration prompt sample")
    p.add_argument("--max-tokens", type=int, default=256, help="calibration prompt length cap (tokens)")
    p.add_argument("--python", default=str(default_python), help="backend Python with torch + transformers")
    p.add_argument("--no-smoke-test", action="store_true", help="skip generating a few tokens with the built model")
    p.add_argument(
        "--allow-failing-smoke", action="store_true", help="write the variant even if it fails its smoke test"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--heal", action="store_true", help="then heal it by distillation from --model (see heal-variant)")
    _add_healing_options(p)


def add_heal_variant_arguments(h: argparse.ArgumentParser, default_python: Path) -> None:
    """``heal-variant``'s options (``default_python``: the backend environment's interpreter)."""
    h.add_argument("--teacher", required=True, help="the full model the variant was pruned from")
    h.add_argument("--variant", required=True, help="the pruned variant (make-variant output)")
    h.add_argument("--out", required=True, help="output directory for the healed variant")
    h.add_argument("--seed", type=int, default=0, help="seed of the healing prompts, batch order and held-out split")
    h.add_argument("--python", default=str(default_python), help="backend Python with torch + transformers")
    h.add_argument(
        "--allow-failing-smoke", action="store_true", help="write the healed variant even if it fails its smoke test"
    )
    h.add_argument("--force", action="store_true", help="replace an existing output directory")
    _add_healing_options(h)


def _add_healing_options(p: Any) -> None:
    g = p.add_argument_group("healing (knowledge distillation from the full model)")
    for opt, (kind, default, _, text) in HEAL_OPTIONS.items():
        g.add_argument("--" + opt.replace("_", "-"), type=kind, default=None, help=f"{text} (default {default:g})")
    data = g.add_mutually_exclusive_group()
    data.add_argument("--task", choices=sorted(HEAL_TASKS), help="healing prompt family, train split (default mixed)")
    data.add_argument("--heal-file", help="JSONL of healing prompts instead (same format as --calibration-file)")
    g.add_argument(
        "--cache-dir", default=str(Path.home() / ".cache" / "llm-gateway" / "heal-data"), help="teacher answer cache"
    )
    g.add_argument("--restart", action="store_true", help="discard the healing checkpoint and start over")
