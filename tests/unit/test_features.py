"""prompt_features: a fixed, named vector; each family of markers fires on the prompts it describes."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from router.features import FEATURE_NAMES, prompt_features

MATHS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? Calculate the total, step by step."
)
CODE = """Refactor this function to be faster:

```python
import math

def is_prime(n):
    if n < 2:
        return False
    for i in range(2, n):
        if n % i == 0:
            return False
    return True
```"""
CODE_NO_EDIT = CODE.replace("Refactor this function to be faster:", "Here is a function I wrote:")
CHOICE = """Which planet is known as the Red Planet?
A. Venus
B. Mars
C. Jupiter
D. Saturn
Answer with the letter only."""
CHAT = "Hello there, nice to meet you"
ESSAY = "Write a detailed essay that explains and compares the causes of the First and Second World Wars."
LATEX = r"Evaluate $\int_0^1 x^2 \, dx$ and simplify $\frac{3}{4} + \sqrt{2}$."
QUOTE = 'Translate into French: "The committee will reconvene next Tuesday to discuss the annual budget."'
REPEAT = "the cat sat on the mat. " * 40

f = FEATURE_NAMES.index


def feats(text: str) -> np.ndarray:
    return prompt_features(text)


# (case, prompt, feature, predicate on its value)
CASES = [
    ("maths has numbers", MATHS, "numbers", lambda v: v > 0),
    ("maths has maths words", MATHS, "maths_words", lambda v: v >= np.log1p(3)),
    ("maths asks for steps", MATHS, "step_words", lambda v: v > 0),
    ("maths has digits", MATHS, "digit_ratio", lambda v: 0 < v < 0.1),
    ("expression", "What is 17 * 23 + (4 - 2)?", "maths_expressions", lambda v: v >= np.log1p(3)),
    ("latex", LATEX, "latex", lambda v: v >= np.log1p(3)),
    ("money", "A shirt costs $25 and is 20% off.", "money_units", lambda v: v >= np.log1p(2)),
    ("code fence", CODE, "code_fences", lambda v: v == pytest.approx(np.log1p(2))),
    ("code keywords", CODE, "code_keywords", lambda v: v >= np.log1p(4)),
    ("code indentation", CODE, "indented_ratio", lambda v: v > 0.4),
    ("code symbols", CODE, "code_symbol_ratio", lambda v: v > 0.01),
    ("choices", CHOICE, "choice_lines", lambda v: v == pytest.approx(np.log1p(4))),
    ("choice brevity", CHOICE, "brevity_words", lambda v: v > 0),
    ("question mark", CHOICE, "questions", lambda v: v == pytest.approx(np.log1p(1))),
    ("wh word", CHOICE, "wh_words", lambda v: v > 0),
    ("essay explain", ESSAY, "explain_words", lambda v: v >= np.log1p(3)),
    ("essay write", ESSAY, "write_words", lambda v: v >= np.log1p(2)),
    ("edit verb", CODE, "edit_verbs", lambda v: v > 0),
    ("code block is copyable", CODE, "copyability", lambda v: v > 0.5),
    ("quoted text counts", QUOTE, "quoted_ratio", lambda v: v > 0.5),
    ("quoted + translate copyable", QUOTE, "copyability", lambda v: v > 0.5),
    ("repetition", REPEAT, "repeated_trigrams", lambda v: v > 0.8),
    ("list lines", "Plan:\n- pack\n- go\n1. eat\n2) sleep", "list_lines", lambda v: v == pytest.approx(np.log1p(4))),
    ("non-ascii", "Übersetze: 日本語のテキストです。", "non_ascii_ratio", lambda v: v > 0.5),
    ("chat: no maths", CHAT, "maths_words", lambda v: v == 0),
    ("chat: no code", CHAT, "code_keywords", lambda v: v == 0),
    ("chat: no choices", CHAT, "choice_lines", lambda v: v == 0),
    ("chat: nothing to copy", CHAT, "copyability", lambda v: v == 0),
    ("chat: no repeats", CHAT, "repeated_trigrams", lambda v: v == 0),
    ("prose: no expressions", ESSAY, "maths_expressions", lambda v: v == 0),
]


@pytest.mark.parametrize(("prompt", "name", "check"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_marker_fires(prompt: str, name: str, check: Callable[[float], bool]) -> None:
    value = float(feats(prompt)[f(name)])
    assert check(value), f"{name} = {value}"


def test_vector_shape_names_and_determinism() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for text in (MATHS, CODE, CHOICE, CHAT, "", "\n\n\n", "?" * 5000, "\ud800 lone surrogate"):
        v = prompt_features(text)
        assert v.shape == (len(FEATURE_NAMES),) and v.dtype == np.float32
        assert np.all(np.isfinite(v))
        np.testing.assert_array_equal(v, prompt_features(text))


def test_relative_orderings() -> None:
    assert feats(CODE)[f("copyability")] > feats(CODE_NO_EDIT)[f("copyability")] > 0
    assert feats(MATHS * 10)[f("log_chars")] > feats(MATHS)[f("log_chars")]
    assert feats(CODE)[f("code_symbol_ratio")] > feats(ESSAY)[f("code_symbol_ratio")]


def test_turns() -> None:
    assert prompt_features(CHAT)[f("log_turns")] == pytest.approx(np.log1p(1))
    assert prompt_features(CHAT, turns=5)[f("log_turns")] == pytest.approx(np.log1p(5))


def test_fast_enough() -> None:
    text = (MATHS + "\n" + CODE + "\n" + CHOICE + "\n")[:2048]
    text = (text * 3)[:2048]
    prompt_features(text)
    runs = []
    for _ in range(50):
        t0 = time.perf_counter()
        prompt_features(text)
        runs.append(time.perf_counter() - t0)
    assert float(np.median(runs)) < 0.002  # ~0.1 ms when idle; a loose bound against regressions


def test_a_long_prompt_is_featurized_from_a_bounded_sample() -> None:
    """Issue 18 #6: a 3.9 MB prompt took 1.28 s to route. Up to the bound nothing changes (the shipped
    artifacts stay valid); past it, a prefix + suffix sample of fixed size, with the real length kept."""
    from router.features import FEATURE_SAMPLE_CHARS, feature_sample

    short = "Explain why the sky is blue. " * (FEATURE_SAMPLE_CHARS // 29)
    assert len(short) <= FEATURE_SAMPLE_CHARS and feature_sample(short) is short
    huge = "def f(x):\n    return x * 2  # why?\n" * 120_000  # ~4 MB
    sample = feature_sample(huge)
    assert len(sample) == FEATURE_SAMPLE_CHARS + 1
    assert sample.startswith(huge[:100]) and sample.endswith(huge[-100:])
    whole = prompt_features(sample, length=len(huge))
    assert whole[0] == pytest.approx(np.log1p(len(huge)))
    assert np.array_equal(whole[1:], prompt_features(sample)[1:])
