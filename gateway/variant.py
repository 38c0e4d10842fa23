"""``llm-gateway make-variant``: build a layer-pruned model variant that vLLM serves unmodified.

The gateway side of the command, torch-free: it picks the calibration prompts (the *train*
split of :mod:`router.datasets`, or a JSONL file), writes them to a JSON file and runs
``gateway/variant_builder.py`` as a script with the backend environment's Python, which has
torch and transformers (CONVENTIONS.md #11). The builder scores layers by Block Influence,
drops the least important, smoke-tests and writes the checkpoint plus ``variant.json``.

Calibration file format (``--calibration-file``): JSONL, one prompt a line, either
``{"messages": [{"role": "user", "content": ...}, ...]}`` or ``{"prompt": "..."}`` (an optional
``"id"`` is recorded). Plain-text lines are taken as single user prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from router.datasets import TASKS, load_prompts

BUILDER = Path(__file__).with_name("variant_builder.py")


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


def builder_command(args: argparse.Namespace, calibration_json: Path) -> list[str]:
    cmd = [str(args.python), str(BUILDER), "--model", str(args.model), "--out", str(args.out)]
    cmd += ["--drop", str(args.drop)] if args.drop is not None else ["--keep-ratio", str(args.keep_ratio)]
    cmd += ["--calibration-json", str(calibration_json), "--seed", str(args.seed), "--max-tokens", str(args.max_tokens)]
    if args.no_smoke_test:
        cmd.append("--no-smoke-test")
    if args.force:
        cmd.append("--force")
    return cmd


def make_variant_command(args: argparse.Namespace) -> int:
    """Entry point: 0 built, 2 bad input, else the builder's exit status."""
    try:
        if args.calibration_file:
            prompts = calibration_from_file(Path(args.calibration_file), args.samples)
            source = f"file {args.calibration_file}"
        else:
            tasks = [t.strip() for t in args.calibration.split(",") if t.strip()]
            unknown = sorted(set(tasks) - set(TASKS))
            if not tasks or unknown:
                raise ValueError(f"--calibration: unknown task(s) {unknown}; known: {', '.join(TASKS)}")
            prompts = calibration_from_tasks(tasks, args.samples, args.seed)
            source = f"router.datasets {','.join(tasks)} train split, seed {args.seed}"
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
        return subprocess.call(builder_command(args, calibration_json), env=_builder_env())


def _builder_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def add_parser(sub: Any, default_python: Path) -> None:
    """Register ``make-variant`` on the CLI's subparsers."""
    p = sub.add_parser(
        "make-variant",
        help="build a layer-pruned variant of a model (Block Influence), served by vLLM unmodified",
    )
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=256, help="calibration prompt length cap (tokens)")
    p.add_argument("--python", default=str(default_python), help="backend Python with torch + transformers")
    p.add_argument("--no-smoke-test", action="store_true")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=make_variant_command)
