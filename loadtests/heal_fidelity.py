"""How closely pruned/healed variants follow their full model on held-out answers, per task.

Answer accuracy on a few dozen items is a coarse measure for a 135M model (SmolLM2 gets 10-15 %
right, so one item moves a ratio by 10 points). This measures the same thing with every token:
teacher-forced on the **full model's own answers** to held-out prompts (the ``--reference-arm`` rows
of a profile JSONL, normally test-split items served by vLLM), it reports for each variant

* **KL(full || variant)** per answer token, in nats (what healing minimises, here on prompts it
  never saw), and
* **top-1 agreement**: the share of answer positions where the variant's most likely next token
  is the full model's (greedy decoding follows the full model exactly while this holds),

overall and per task. Runs with the backend environment's Python (torch + transformers), where this
project is not installed: from the repository root, as a module, so the root is on its import path::

    vllm-venv/bin/python -m loadtests.heal_fidelity --teacher MODELS/smollm2-135m-instruct \\
        --variant d6=MODELS/smollm2-135m-instruct-d6 --variant d6-healed=/path/healed \\
        --profile profiles/strategies/heal-eval.jsonl --reference-arm smollm2-plain \\
        --json loadtests/results/heal-fidelity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lab.profiles import read_rows
from variants.builder import encode
from variants.distill import autocast, torch_device


def reference_sequences(profile: Path, arm: str, tokenizer: Any, seq_len: int) -> list[dict[str, Any]]:
    """(prompt id, task, token ids, first answer position) for every answered ``arm`` row of ``profile``."""
    out = []
    for row in read_rows(profile):
        if row.get("arm") != arm or row.get("error") or not row.get("text"):
            continue
        prompt = encode(tokenizer, [{"role": "user", "content": row["prompt"]}])[0].tolist()
        answer = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        prompt = prompt[-(seq_len // 2) :] if len(prompt) + len(answer) > seq_len else prompt
        ids = (prompt + answer)[:seq_len]
        out.append({"id": row["prompt_id"], "task": row["task"], "ids": ids, "start": len(prompt)})
    return out


def answer_scores(teacher_logits: Any, student_logits: Any, start: int) -> tuple[float, int, int]:
    """(summed KL, agreeing positions, positions) over the positions that predict answer tokens."""
    import torch.nn.functional as F

    t = F.log_softmax(teacher_logits[start - 1 : -1].float(), dim=-1)
    s = F.log_softmax(student_logits[start - 1 : -1].float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    agree = (t.argmax(-1) == s.argmax(-1)).sum()
    return float(kl.sum()), int(agree), int(kl.numel())


def measure(teacher_dir: Path, variants: dict[str, Path], seqs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: overall and per-task mean KL per answer token and top-1 agreement."""
    import torch
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    students = {
        name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval() for name, path in variants.items()
    }
    sums: dict[str, dict[str, list[float]]] = {n: defaultdict(lambda: [0.0, 0.0, 0.0]) for n in students}
    device = torch_device("auto")
    for model in (teacher, *students.values()):
        model.to(device)
    with torch.inference_mode(), autocast(device):  # bf16 as in healing: about 7x faster on an AMX CPU
        for seq in seqs:
            ids = torch.tensor([seq["ids"]], device=device)
            t_logits = teacher(input_ids=ids, use_cache=False).logits[0]
            for name, student in students.items():
                kl, agree, n = answer_scores(t_logits, student(input_ids=ids, use_cache=False).logits[0], seq["start"])
                for key in ("all", seq["task"]):
                    acc = sums[name][key]
                    acc[0], acc[1], acc[2] = acc[0] + kl, acc[1] + agree, acc[2] + n
    return {
        name: {
            key: {"kl": round(kl / n, 4), "top1_agreement": round(agree / n, 4), "tokens": int(n)}
            for key, (kl, agree, n) in sorted(per.items())
        }
        for name, per in sums.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, type=Path, help="the full model")
    parser.add_argument("--variant", action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--profile", required=True, type=Path, help="profile JSONL holding the full model's answers")
    parser.add_argument("--reference-arm", required=True, help="the arm in --profile that served the full model")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (prompt + answer)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    variants = dict(v.split("=", 1) for v in args.variant)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    seqs = reference_sequences(args.profile, args.reference_arm, tokenizer, args.seq_len)
    if not seqs:
        print(f"no answered rows of arm {args.reference_arm!r} in {args.profile}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = measure(args.teacher, {k: Path(v) for k, v in variants.items()}, seqs)
    tasks = sorted({s["task"] for s in seqs})
    took = time.monotonic() - started
    print(f"{len(seqs)} reference answers of {args.reference_arm} ({', '.join(tasks)}), {took:.0f} s")
    print(f"{'variant':<24}" + "".join(f"{k:>22}" for k in ["all", *tasks]))
    for name, per in results.items():
        cells = [f"{per[k]['kl']:.3f} / {100 * per[k]['top1_agreement']:.1f}%" for k in ["all", *tasks]]
        print(f"{name:<24}" + "".join(f"{c:>22}" for c in cells))
    print("(KL nats per answer token / top-1 agreement with the full model)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "teacher": str(args.teacher),
                    "variants": variants,
                    "profile": str(args.profile),
                    "reference_arm": args.reference_arm,
                    "sequences": len(seqs),
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
