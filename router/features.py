"""Cheap prompt features beside the embedding: length, maths, code, multiple choice, copyability.

Deterministic, pure Python + NumPy, well under a millisecond for a few KB of text. The names in
:data:`FEATURE_NAMES` are stored in router artifacts, so changing them forces a retrain (a
mismatched artifact is refused at start-up).
"""

from __future__ import annotations

import math
import re

import numpy as np
from numpy.typing import NDArray

FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "digit_ratio",
    "numbers",
    "maths_words",
    "operators",
    "code_fence",
    "code_words",
    "symbol_ratio",
    "indented_lines",
    "choice_lines",
    "questions",
    "edit_verbs",
    "repeated_trigrams",
    "lines",
)

_NUM = re.compile(r"\d+(?:[.,]\d+)?")
_MATHS = re.compile(
    r"\b(?:solve|calculate|how many|how much|total|sum|product|percent|equation|integer|"
    r"probability|average|remainder|prove|compute)\b",
    re.IGNORECASE,
)
_OPS = re.compile(r"[+\-*/=^%]")
_CODE = re.compile(
    r"\b(?:def|class|import|return|function|const|let|var|public|static|void|lambda|elif|"
    r"print|self|async|await)\b"
)
_CHOICE = re.compile(r"^\s*\(?[A-D][\).:]\s", re.MULTILINE)
_EDIT = re.compile(
    r"\b(?:rewrite|fix|translate|summari[sz]e|refactor|correct|edit|rephrase|convert|complete|"
    r"paraphrase|improve)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")


def prompt_features(text: str) -> NDArray[np.float32]:
    """The features of ``text`` in :data:`FEATURE_NAMES` order."""
    n = max(len(text), 1)
    words = _WORD.findall(text.lower())
    lines = text.splitlines() or [""]
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repeated = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    symbols = sum(text.count(c) for c in "{}[]();<>:=_")
    values = (
        math.log1p(len(text)),
        math.log1p(len(words)),
        sum(c.isdigit() for c in text) / n,
        math.log1p(len(_NUM.findall(text))),
        math.log1p(len(_MATHS.findall(text))),
        math.log1p(len(_OPS.findall(text))),
        1.0 if "```" in text else 0.0,
        math.log1p(len(_CODE.findall(text))),
        symbols / n,
        sum(1 for line in lines if line.startswith(("    ", "\t"))) / len(lines),
        math.log1p(len(_CHOICE.findall(text))),
        math.log1p(text.count("?")),
        math.log1p(len(_EDIT.findall(text))),
        repeated,
        math.log1p(len(lines)),
    )
    return np.asarray(values, dtype=np.float32)
