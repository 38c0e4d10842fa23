"""Is an answer correct? GSM8K number match, MMLU letter, HumanEval by running the tests, a rename
by comparing syntax trees, a log extraction line by line.

HumanEval code runs in a separate ``python -I`` process, in an empty temporary directory, in its
own process group, with CPU, address-space and file-size limits and a wall-clock timeout; the
whole group is killed on timeout. That keeps a hostile or looping completion from hurting the
profiler, but it is not a security boundary for untrusted models: use a container for that.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from typing import Any

from lab.copy_tasks import same_code, score_extract
from lab.datasets import Prompt

_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_NUMBER = re.compile(_NUM)
# "The answer is 18", "answer: $18", "The answer is **18**", "\\boxed{18}", "#### 18"
_ANSWER_IS = re.compile(
    r"(?:answer\s*(?:is|:)|####|\\boxed\{)\s*:?\s*(?:\*\*|\$|\\\(|\\\[|\\boxed\{|\(|\s)*(" + _NUM + ")",
    re.IGNORECASE,
)
# "The answer is B", "Answer: (B)", "the correct option is **C**": the last such phrase wins
_LETTER_ANSWER = re.compile(
    r"(?i:answer|(?:correct|right|best)\s+(?:option|choice))\s*(?:is|:)?\s*:?\s*"
    r"(?:(?i:option|choice|letter)\s+)?(?:\*\*|\(|\s)*([ABCD])\b"
)
_LETTER_FALLBACKS = (
    # a line that starts with the letter: "B", "(B)", "B.", "**B**", "C) the mitochondria"
    re.compile(r"^\s*(?:\*\*|\()*([ABCD])(?:[\).:*]|\s*$)", re.MULTILINE),
    # a standalone letter that is not the article "A" starting a sentence ("A cell is ...")
    re.compile(r"\b([ABCD])\b(?!\s+[a-z])"),
    re.compile(r"\b([ABCD])\b"),
)
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPEN_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)\Z", re.DOTALL | re.IGNORECASE)

MEMORY_LIMIT_BYTES = 1 << 30
CPU_LIMIT_S = 10
FILE_SIZE_LIMIT_BYTES = 1 << 20


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_answer(text: str) -> float | None:
    """The number after the last "answer is" (or "answer:", "####", "\\boxed{"), else the last number."""
    m = _ANSWER_IS.findall(text)
    if m:
        return _to_float(m[-1])
    nums = _NUMBER.findall(text)
    return _to_float(nums[-1]) if nums else None


def mmlu_letter(text: str) -> str | None:
    """The chosen option letter A-D, or ``None``. The last explicit "answer is X" wins, then a line
    that starts with a letter, then the first standalone capital A-D (the article "A" excluded)."""
    said = _LETTER_ANSWER.findall(text)
    if said:
        return str(said[-1])
    for pattern in _LETTER_FALLBACKS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def extract_code(text: str) -> str:
    """The longest fenced code block; an unclosed fence (output cut at max_tokens) runs to the end;
    no fence: the text itself (a raw completion)."""
    blocks = _CODE_BLOCK.findall(text)
    if blocks:
        return str(max(blocks, key=len))
    m = _OPEN_BLOCK.search(text)
    return m.group(1) if m else text


def _limits() -> None:
    # Runs in the forked child before exec. Only setrlimit calls (no locks, no imports), which is
    # what keeps preexec_fn safe enough while the profiler has other threads.
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT_BYTES, FILE_SIZE_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_humaneval(problem: dict[str, Any], completion: str, timeout_s: float = 15.0) -> bool:
    """Run the problem's tests against ``completion`` in a sandboxed process; ``True`` if they pass.

    ``problem`` has ``prompt``, ``test`` and ``entry_point`` (HumanEval's fields). The program is
    ``prompt + code + test + check(entry_point)``, where ``code`` comes from :func:`extract_code`:
    a function body continues the prompt's function; a whole function replaces it, after the
    prompt's imports and helpers. Blocks the calling thread for up to ``timeout_s``; safe to call
    from several threads at once.
    """
    code, prompt = extract_code(completion), str(problem["prompt"])
    head = f"def {problem['entry_point']}("
    # a whole function goes after the prompt's imports and helpers; a body continues the prompt's function
    code = prompt[: prompt.index(head)] + code if head in code and head in prompt else prompt + code
    program = f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    with tempfile.TemporaryDirectory(prefix="heval-", ignore_cleanup_errors=True) as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        proc = subprocess.Popen(
            [sys.executable, "-I", path],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limits,
            start_new_session=True,  # own process group: one killpg reaches everything it forks
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        try:
            passed = proc.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            passed = False
        _kill_group(proc.pid)  # also reaps anything it left running in the background
        proc.wait()
        return passed


def score(prompt: Prompt, text: str) -> bool | None:
    """``True``/``False`` for labelled tasks, ``None`` where quality is not measured (MT-Bench)."""
    if prompt.task == "gsm8k":
        got, want = gsm8k_answer(text), _to_float(str(prompt.reference))
        return got is not None and want is not None and abs(got - want) < 1e-6
    if prompt.task in ("mmlu", "mmlu-circular"):
        return bool(mmlu_letter(text) == prompt.reference)
    if prompt.task == "humaneval":
        return run_humaneval(dict(prompt.reference), text)
    if prompt.task == "rename":
        return same_code(extract_code(text), str(prompt.reference["expected"]))
    if prompt.task == "extract":
        return score_extract(text, list(prompt.reference))
    return None
