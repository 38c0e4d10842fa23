"""Cheap prompt features beside the embedding: size, maths, code, multiple choice, copyability.

Each feature is a number that is cheap to compute and plausibly predicts answer quality
(difficulty), answer length, or how much of the answer a speculative decoder can draft by
copying from the prompt (n-gram / prompt-lookup acceptance). Counts are ``log1p``-scaled,
ratios lie in [0, 1], so no feature explodes on a long prompt.

Deterministic, pure Python + NumPy, about 0.1 ms for a 2 KB prompt. The names in
:data:`FEATURE_NAMES` are stored in router artifacts: adding, removing or reordering one means
retraining (an artifact whose ``feature_names`` differ must be refused).
"""

from __future__ import annotations

import math
import re

import numpy as np
from numpy.typing import NDArray

FEATURE_NAMES: tuple[str, ...] = (
    # size and shape
    "log_chars",  # log1p(characters)
    "log_words",  # log1p(words)
    "log_lines",  # log1p(lines)
    "log_turns",  # log1p(messages in the conversation); 1 when not given
    "mean_word_len",  # characters per word / 10
    "unique_word_ratio",  # distinct words / words
    "non_ascii_ratio",  # extra UTF-8 bytes per character: non-English text, symbols
    "list_lines",  # log1p(lines that start a bullet or numbered item)
    # maths
    "digit_ratio",  # digits / characters
    "numbers",  # log1p(all-digit words: "3.5" counts two)
    "maths_words",  # log1p(solve, calculate, how many, total, percent, ...)
    "maths_expressions",  # log1p(digit operator digit, e.g. "3 * 4", "x^2")
    "latex",  # log1p(LaTeX markers: $, \frac, \sqrt, ...)
    "money_units",  # log1p($ amounts, %, units of measure)
    # code
    "code_fences",  # log1p(``` markers)
    "code_keywords",  # log1p(def, class, import, return, function, ...)
    "code_symbol_ratio",  # braces, brackets, parentheses, semicolons, = per character
    "indented_ratio",  # lines indented by 4 spaces or a tab / lines
    # question form
    "choice_lines",  # log1p(lines such as "A." "B)" "(C)")
    "questions",  # log1p(question marks)
    "wh_words",  # log1p(what, why, how, which, ...)
    "explain_words",  # log1p(explain, describe, compare, analyse, ...): open-ended, longer answers
    "write_words",  # log1p(write, story, essay, poem, email, ...): generation, long answers
    "brevity_words",  # log1p(briefly, only, one word, concise, ...): short answers
    "step_words",  # log1p(step by step, reasoning, show your work): chain-of-thought answers
    # copyability: how much an answer can copy from the prompt
    "edit_verbs",  # log1p(rewrite, fix, translate, summarise, refactor, ...)
    "quoted_ratio",  # characters inside code fences, quotes (≥ 40 chars) or "> " lines / characters
    "repeated_trigrams",  # 1 - distinct word trigrams / trigrams
    "copyability",  # quoted_ratio when an edit verb is present, else quoted_ratio / 4
)

_WORD = re.compile(r"\w+")
_OPERATOR = re.compile(r"[-+*/^\u00d7\u00f7=<>] ?[\d(xyn]")  # the left operand is checked in Python: faster
_LEFT_OPERAND = frozenset("0123456789)xyn")
_LATEX = re.compile(r"\$(?!\s?\d)|\\(?:frac|sqrt|sum|int|cdot|times|pi|alpha|beta|theta|left|right|begin)\b")
_CHOICE = re.compile(r"^[ \t]*\(?[A-Ea-e][).:][ \t]", re.MULTILINE)
_LIST = re.compile(r"^[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t]", re.MULTILINE)
_FENCED = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```[^\n]*|\Z)", re.DOTALL | re.MULTILINE)
_QUOTED = re.compile(r"\"[^\"\n]{40,}\"")
_CURLY_QUOTED = re.compile(r"“[^”]{40,}”")
_BLOCKQUOTE = re.compile(r"^>[^\n]*", re.MULTILINE)

# Keyword families, counted on lower-cased words (one dict look-up per word) and phrases
# (``str.count`` on the lower-cased text): a regex alternation per family costs ten times more.
# A word belongs to one family at most.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "maths_words": (
        "solve",
        "calculate",
        "compute",
        "total",
        "sum",
        "product",
        "difference",
        "percent",
        "percentage",
        "equation",
        "equations",
        "integer",
        "integers",
        "probability",
        "average",
        "remainder",
        "prove",
        "derivative",
        "integral",
        "simplify",
        "ratio",
        "fraction",
        "divided",
        "multiplied",
        "times",
        "minus",
        "plus",
        "area",
        "volume",
        "perimeter",
        "digits",
        "prime",
        "modulo",
        "polynomial",
    ),
    "money_units": (
        "dollars",
        "dollar",
        "cents",
        "euros",
        "km",
        "kg",
        "cm",
        "mm",
        "miles",
        "mile",
        "hours",
        "hour",
        "minutes",
        "minute",
        "seconds",
        "days",
        "weeks",
        "years",
        "feet",
        "inches",
        "liters",
        "litres",
        "gallons",
        "ounces",
        "pounds",
        "meters",
        "metres",
        "grams",
        "mph",
    ),
    "code_keywords": (
        "def",
        "class",
        "import",
        "return",
        "function",
        "const",
        "var",
        "public",
        "private",
        "static",
        "void",
        "lambda",
        "elif",
        "async",
        "await",
        "self",
        "print",
        "printf",
        "println",
        "include",
        "struct",
        "fn",
        "func",
        "nullptr",
        "std",
        "int",
        "str",
        "bool",
        "char",
        "namespace",
        "typedef",
        "args",
        "kwargs",
        "len",
        "dict",
        "param",
        "returns",
        "python",
        "javascript",
        "sql",
        "java",
        "rust",
        "bash",
        "regex",
        "api",
        "json",
    ),
    "wh_words": ("what", "why", "how", "which", "who", "whom", "whose", "when", "where"),
    "explain_words": (
        "explain",
        "describe",
        "discuss",
        "compare",
        "contrast",
        "analyze",
        "analyse",
        "elaborate",
        "justify",
        "evaluate",
        "advantages",
        "disadvantages",
        "differences",
        "detailed",
        "implications",
        "explains",
        "explanation",
        "describes",
        "discusses",
        "compares",
        "comparison",
        "analysis",
    ),
    "write_words": (
        "write",
        "compose",
        "draft",
        "generate",
        "create",
        "story",
        "essay",
        "poem",
        "email",
        "blog",
        "article",
        "speech",
        "outline",
        "plan",
        "itinerary",
        "list",
        "design",
        "imagine",
        "pretend",
    ),
    "brevity_words": ("briefly", "brief", "concise", "concisely", "short", "only", "tl", "tldr"),
    "step_words": ("steps", "reasoning", "think", "derive", "stepwise"),
    "edit_verbs": (
        "rewrite",
        "fix",
        "translate",
        "summarize",
        "summarise",
        "summary",
        "refactor",
        "edit",
        "rephrase",
        "paraphrase",
        "convert",
        "proofread",
        "improve",
        "shorten",
        "reformat",
        "complete",
        "continue",
        "modify",
        "update",
        "debug",
        "optimize",
        "optimise",
        "revise",
        "polish",
        "translation",
        "refactoring",
    ),
}
_PHRASES: dict[str, tuple[str, ...]] = {
    "maths_words": ("how many", "how much", "how long", "how far", "how old"),
    "explain_words": ("pros and cons", "in detail", "step-by-step explanation"),
    "brevity_words": ("one word", "single word", "yes or no", "in one sentence", "just the", "the letter"),
    "step_words": ("step by step", "step-by-step", "show your work", "walk me through", "let's think"),
    "edit_verbs": ("fill in", "the following code", "the following text"),
}
_FAMILY_NAMES = tuple(_FAMILIES)
_KEYWORD = {word: i for i, family in enumerate(_FAMILY_NAMES) for word in _FAMILIES[family]}  # families are disjoint
# (phrase, its rarest word, family): a phrase is only searched for when that word is in the prompt.
_PHRASE_LIST = tuple(
    (p, max(_WORD.findall(p), key=len), _FAMILY_NAMES.index(f)) for f, ps in _PHRASES.items() for p in ps
)

_DIGITS = "0123456789"
_CODE_SYMBOLS = "{}[]();="


def _log_count(pattern: re.Pattern[str], text: str) -> float:
    return math.log1p(len(pattern.findall(text)))


def _expressions(text: str) -> int:
    """``3 * 4``, ``x^2``, ``(a + 1) = 5``: an operator between operands."""
    count = 0
    for m in _OPERATOR.finditer(text):
        i = m.start() - 1
        if i > 0 and text[i] == " ":
            i -= 1
        if i >= 0 and text[i] in _LEFT_OPERAND:
            count += 1
    return count


def _quoted_chars(text: str) -> int:
    """Characters inside fenced code blocks, long quotations and ``>`` lines."""
    total = 0
    if "```" in text:
        fenced = _FENCED.findall(text)
        total += sum(map(len, fenced))
        text = _FENCED.sub("", text)
    if '"' in text:
        total += sum(map(len, _QUOTED.findall(text)))
    if "“" in text:
        total += sum(map(len, _CURLY_QUOTED.findall(text)))
    if ">" in text:
        total += sum(map(len, _BLOCKQUOTE.findall(text)))
    return total


#: Longest text featurized: a longer prompt is represented by its first and last halves of this many
#: characters (:func:`feature_sample`), so routing a 4 MB prompt costs what a 16k one does.
FEATURE_SAMPLE_CHARS = 16384


def feature_sample(text: str, limit: int = FEATURE_SAMPLE_CHARS) -> str:
    """``text`` itself up to ``limit`` characters (features unchanged); else its first and last
    ``limit // 2`` characters joined by a newline."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n" + text[-half:]


def prompt_features(text: str, turns: int | None = None, length: int | None = None) -> NDArray[np.float32]:
    """The features of ``text`` in :data:`FEATURE_NAMES` order: float32, shape ``(len(FEATURE_NAMES),)``.

    ``turns``: how many messages the prompt was built from, when the caller knows it (else 1).
    ``length``: the whole prompt's length when ``text`` is a :func:`feature_sample` of it (the length
    feature keeps the real size; every other feature describes the sample).
    Deterministic and finite for any input, the empty string included.
    """
    n = max(len(text), 1)
    lower = text.lower()
    words = _WORD.findall(lower)
    n_words = len(words)
    lines = text.splitlines() or [""]

    family = [0] * len(_FAMILY_NAMES)
    for word in words:
        index = _KEYWORD.get(word)
        if index is not None:
            family[index] += 1
    vocabulary = set(words)
    for phrase, gate, index in _PHRASE_LIST:
        if gate in vocabulary:
            family[index] += lower.count(phrase)
    kw = dict(zip(_FAMILY_NAMES, family, strict=True))

    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repeated = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    quoted = min(_quoted_chars(text) / n, 1.0)
    values = (
        math.log1p(len(text) if length is None else length),
        math.log1p(n_words),
        math.log1p(len(lines)),
        math.log1p(max(turns if turns is not None else 1, 0)),
        sum(map(len, words)) / n_words / 10.0 if n_words else 0.0,
        len(vocabulary) / n_words if n_words else 0.0,
        (len(text.encode("utf-8", "surrogatepass")) - len(text)) / n,
        _log_count(_LIST, text),
        sum(map(text.count, _DIGITS)) / n,
        math.log1p(sum(map(str.isdigit, words))),
        math.log1p(kw["maths_words"]),
        math.log1p(_expressions(text)),
        _log_count(_LATEX, text) if "$" in text or "\\" in text else 0.0,
        math.log1p(kw["money_units"] + text.count("$") + text.count("%")),
        math.log1p(text.count("```")),
        math.log1p(kw["code_keywords"]),
        sum(map(text.count, _CODE_SYMBOLS)) / n,
        sum(1 for line in lines if line.startswith(("    ", "\t"))) / len(lines),
        _log_count(_CHOICE, text),
        math.log1p(text.count("?")),
        math.log1p(kw["wh_words"]),
        math.log1p(kw["explain_words"]),
        math.log1p(kw["write_words"]),
        math.log1p(kw["brevity_words"]),
        math.log1p(kw["step_words"]),
        math.log1p(kw["edit_verbs"]),
        quoted,
        repeated,
        quoted if kw["edit_verbs"] else quoted / 4.0,
    )
    return np.asarray(values, dtype=np.float32)
