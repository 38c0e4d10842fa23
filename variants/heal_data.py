"""The healing data of ``heal-variant``: the full model's answers and the training sequences cut from them.

Runs in the backend environment like :mod:`variants.healer` (torch is imported lazily, by
:func:`teacher_answers` only; the rest is pure and unit-tested without torch).

* The teacher (full model) answers every healing prompt greedily **once**
  (:func:`load_or_make_answers`); the answers are cached under ``--cache-dir`` keyed by the
  teacher's weights, the prompts and the answer budget, so d2/d4/d6 variants of one model share them.
* A training sequence (:func:`make_sequences`) is the chat-templated prompt followed by the
  teacher's answer token ids, end-of-turn included (so the student learns to stop), cut to
  ``--seq-len``; :func:`unfinished_answers` counts those whose answer end was cut off.
* Every 10th sequence is held out for the before/after KL (:func:`split_held_out`), and the batch of
  step *s* is a pure function of (seed, *s*) (:func:`batch_indices`), so a resumed run sees the same
  data as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from variants.checkpoint import sha256_json, weights_sha256
from variants.progress import progress

HELD_OUT_FRACTION = 0.1


def teacher_answers(
    teacher: Any, tokenizer: Any, prompts: list[dict[str, Any]], max_new_tokens: int, batch_size: int
) -> list[dict[str, Any]]:
    """Greedy answers of ``teacher`` to ``prompts``: ``[{"prompt_ids", "answer_ids", "answer"}]``, with a
    progress bar on stderr."""
    import torch

    from variants.builder import encode

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = stop_ids(teacher, tokenizer)
    encoded = [encode(tokenizer, p["messages"])[0].tolist() for p in prompts]
    out: list[dict[str, Any]] = []
    bar = progress(len(encoded), "teacher answers", "answer")
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk])  # left padding
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
        with torch.inference_mode():
            gen = teacher.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        for row, prompt_ids in zip(gen[:, width:].tolist(), chunk, strict=True):
            answer: list[int] = []
            for t in row:
                answer.append(t)
                if t in eos_ids:
                    break
            text = tokenizer.decode(answer, skip_special_tokens=True)
            out.append({"prompt_ids": prompt_ids, "answer_ids": answer, "answer": text})
        bar.update(len(chunk))
    bar.close()
    return out


def stop_ids(teacher: Any, tokenizer: Any) -> set[int]:
    """The token ids that end an answer (the generation config's end-of-turn ids and the tokenizer's EOS)."""
    eos = teacher.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}


def load_or_make_answers(
    teacher_dir: Path,
    teacher: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    max_new_tokens: int,
    cache_dir: Path,
    log: Any,
) -> tuple[list[dict[str, Any]], str]:
    """Teacher answers from the cache, or generated once and cached; returns (answers, cache file)."""
    key = sha256_json(
        {
            "teacher": weights_sha256(teacher_dir),
            "prompts": [p["messages"] for p in prompts],
            "max_new_tokens": max_new_tokens,
        }
    )
    path = cache_dir / f"answers-{key[:24]}.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("key") == key and len(data.get("answers", [])) == len(prompts):
            log(f"==> teacher answers from cache {path}")
            return data["answers"], str(path)
    log(f"==> teacher answers: generating {len(prompts)} greedy answers (<= {max_new_tokens} tokens), once")
    answers = teacher_answers(teacher, tokenizer, prompts, max_new_tokens, 32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "answers": answers}, ensure_ascii=False))
    tmp.replace(path)
    return answers, str(path)


def make_sequences(answers: list[dict[str, Any]], seq_len: int) -> list[tuple[list[int], int]]:
    """(token ids, index of the first answer token) per item, cut to ``seq_len`` tokens.

    A prompt longer than ``seq_len`` keeps its last ``seq_len // 2`` tokens, so answers are always seen.
    """
    out = []
    for a in answers:
        prompt = a["prompt_ids"]
        if len(prompt) > seq_len // 2 and len(prompt) + len(a["answer_ids"]) > seq_len:
            prompt = prompt[-(seq_len // 2) :]
        ids = (prompt + a["answer_ids"])[:seq_len]
        out.append((ids, len(prompt)))
    return out


def unfinished_answers(answers: list[dict[str, Any]], seqs: list[tuple[list[int], int]], stops: set[int]) -> int:
    """How many training sequences (``make_sequences(answers, ...)``) stop before their answer ends.

    An answer is unfinished when the teacher hit ``--answer-tokens`` before an end-of-turn token, or
    when ``--seq-len`` cut the sequence inside it. The student is never shown where such an answer
    ends: measured on SmolLM2 d6, a run where most GSM8K answers were cut before their closing
    "The answer is N" learnt to reason on without concluding (docs/strategies.md).
    """
    count = 0
    for answer, (ids, start) in zip(answers, seqs, strict=True):
        whole = len(ids) - start == len(answer["answer_ids"])
        count += not (whole and answer["answer_ids"] and answer["answer_ids"][-1] in stops)
    return count


def split_held_out(n: int) -> tuple[list[int], list[int]]:
    """(train, held-out) item indices: every 10th item is held out for the before/after KL (n >= 2)."""
    every = round(1 / HELD_OUT_FRACTION)
    held = [i for i in range(n) if i % every == every - 1] if n >= every else [n - 1]
    return [i for i in range(n) if i not in set(held)], held


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Item indices of training step ``step`` (0-based): epochs of seeded permutations, concatenated.

    A pure function of its arguments, so resuming at any step sees the same data as an uninterrupted run.
    """
    import random

    out: list[int] = []
    start = step * batch_size
    epoch, offset = divmod(start, n_items)
    while len(out) < batch_size:
        order = list(range(n_items))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.extend(order[offset : offset + batch_size - len(out)])
        epoch, offset = epoch + 1, 0
    return out
