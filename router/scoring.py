"""Is an answer correct? GSM8K number match, MMLU letter, HumanEval by running the tests.

HumanEval code runs in a separate ``python -I`` process, in an empty temporary directory, in its
own process group, with CPU, address-space and file-size limits and a wall-clock timeout; the
whole group is killed on timeout. That keeps a hostile or looping completion from hurting the
profiler, but it is not a security boundary for untrusted models: use a container for that.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from typing import Any

from router.datasets import Prompt

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_LETTER_PATTERNS = (
    re.compile(r"answer is[:\s]*\(?([ABCD])\b"),
    re.compile(r"^\s*\(?([ABCD])[\).:\s]", re.MULTILINE),
    re.compile(r"^\s*([ABCD])\s*$", re.MULTILINE),
    re.compile(r"\b([ABCD])\b"),
)
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_answer(text: str) -> float | None:
    """The number after 'answer is', else the last number in the text."""
    m = _ANSWER_IS.findall(text)
    if m:
        return _to_float(m[-1])
    nums = _NUMBER.findall(text)
    return _to_float(nums[-1]) if nums else None


def mmlu_letter(text: str) -> str | None:
    """The chosen option letter A-D, or ``None``."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def extract_code(text: str) -> str:
    blocks = _CODE_BLOCK.findall(text)
    if blocks:
        return str(max(blocks, key=len))
    return text


def _limits() -> None:  # runs in the child before exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def run_humaneval(problem: dict[str, Any], completion: str, timeout_s: float = 15.0) -> bool:
    """Run the problem's tests against ``completion`` (a full function or a body) in a sandboxed process."""
    code = extract_code(completion)
    if f"def {problem['entry_point']}" not in code:
        code = problem["prompt"] + code
    program = f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    with tempfile.TemporaryDirectory(prefix="heval-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as fh:
            fh.write(program)
        proc = subprocess.Popen(
            [sys.executable, "-I", path],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limits,
            env={"PATH": "/usr/bin:/bin"},
        )
        try:
            return proc.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False


def score(prompt: Prompt, text: str) -> bool | None:
    """``True``/``False`` for labelled tasks, ``None`` where quality is not measured (MT-Bench)."""
    if prompt.task == "gsm8k":
        got, want = gsm8k_answer(text), _to_float(str(prompt.reference))
        return got is not None and want is not None and abs(got - want) < 1e-6
    if prompt.task == "mmlu":
        return bool(mmlu_letter(text) == prompt.reference)
    if prompt.task == "humaneval":
        return run_humaneval(dict(prompt.reference), text)
    return None
