"""Correctness scoring: answer extraction tables and the HumanEval sandbox."""

from __future__ import annotations

import time

import pytest

from router.datasets import Prompt, split_of
from router.scoring import gsm8k_answer, mmlu_letter, run_humaneval, score


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


def test_score_dispatch_and_split_stability() -> None:
    p = Prompt("gsm8k/1", "gsm8k", [{"role": "user", "content": "q"}], "18", split_of("gsm8k/1"))
    assert score(p, "The answer is 18.") is True
    assert score(p, "The answer is 17.") is False
    m = Prompt("mtbench/081", "mtbench", [{"role": "user", "content": "q"}], None, "train")
    assert score(m, "anything") is None
    assert split_of("gsm8k/00001") == split_of("gsm8k/00001")
    share = sum(split_of(f"x/{i}") == "test" for i in range(2000)) / 2000
    assert 0.15 < share < 0.25
