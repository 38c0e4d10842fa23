"""Synthetic profiles with a planted copy/speed relation, for the speed-head tests.

Prompts are of two kinds, as in real traffic: copy/edit requests that quote a block of code
("Refactor the following code: ```python ...```", with or without surrounding context), and free
text (stories, explanations, questions). Each gets the router's real prompt vector
(:func:`router.learned.prompt_vector` with the features-only encoder), so the heads learn from
exactly what the gateway computes at decision time.

Two arms of one model are "measured" on every prompt:

* ``plain`` decodes at :data:`BASE_TPS` times log-normal noise, whatever the prompt;
* ``ngram`` (speculative) decodes at :func:`true_speedup` (copyability) times the plain speed,
  times independent noise — ``0.85 * (1 + 2 * copyability)``: 15 % slower than plain where nothing
  can be copied (drafts are proposed and rejected), up to 2.55x where the answer is mostly the
  quoted block.

Quality labels and answer lengths are the same for both arms (speculation is lossless), so only the
speed heads tell the arms apart. Used by ``tests/unit/test_speed_heads.py`` and, loaded by path,
``tests/integration/test_strategy_routing.py``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from router.encoder import load_encoder
from router.features import FEATURE_NAMES
from router.learned import feature_names, prompt_vector
from router.training import Row

BASE_TPS = 40.0
NOISE = 0.08  # sd of log speed per measurement: about what one profile run shows on a quiet machine
COPYABILITY = FEATURE_NAMES.index("copyability")
QUOTED = FEATURE_NAMES.index("quoted_ratio")
PLAIN, NGRAM = "smol-plain", "smol-ngram"
ENCODER = load_encoder("none")
NAMES = feature_names(ENCODER)

CODE = """def merge_intervals(intervals):
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda item: item[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return [tuple(pair) for pair in merged]


class RateLimiter:
    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = 0.0

    def allow(self, now):
        elapsed = now - self.updated
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def word_counts(text):
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?")
        counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
""".splitlines()

EDITS = (
    "Refactor the following code to use clearer names",
    "Rewrite the following code with type hints",
    "Fix the bug in this code and return the whole code",
    "Add docstrings to the following code and return it unchanged otherwise",
    "Convert this code to use dataclasses where it helps",
)
CONTEXT = (
    "It comes from a small service we run in production.",
    "Our team reviews every change to this module carefully, so keep the diff small.",
    "The tests already pass; the goal is readability for new contributors who join next month.",
    "Please keep the public function names, since other modules import them by name.",
)
TOPICS = (
    "a lighthouse keeper", "the history of tea", "a dragon who fears heights", "the water cycle",
    "a city under the sea", "learning to play the violin", "the first moon landing", "a lost umbrella",
)  # fmt: skip
FREE = (
    "Write a short story about {t}.",
    "Explain {t} to a ten-year-old.",
    "Write a poem about {t}, in four stanzas.",
    "What would a travel guide say about {t}? Describe it in detail.",
    "Compose an email to a friend telling them about {t}.",
)


def true_speedup(copyability: float) -> float:
    """The n-gram arm's decode speed over the plain arm's, before noise."""
    return 0.85 * (1.0 + 2.0 * copyability)


def copy_prompt(rng: random.Random) -> str:
    """An edit request quoting a slice of :data:`CODE`, with 0-4 sentences of context around it."""
    start = rng.randrange(0, len(CODE) - 4)
    block = "\n".join(CODE[start : start + rng.randint(3, 28)])
    context = " ".join(rng.sample(CONTEXT, rng.randint(0, len(CONTEXT))))
    return f"{rng.choice(EDITS)}. {context}\n```python\n{block}\n```".replace(".  ", ". ")


def free_prompt(rng: random.Random) -> str:
    return rng.choice(FREE).format(t=rng.choice(TOPICS))


@dataclass
class Profiles:
    """Rows for both arms, the raw prompt vectors and lengths :func:`router.training.train` takes, the
    prompts' texts and their copyability."""

    rows: list[Row]
    vectors: dict[str, np.ndarray]
    kchars: dict[str, float]
    texts: dict[str, str]
    copyability: dict[str, float]


def profiles(n: int, seed: int, copy_share: float = 0.5) -> Profiles:
    """``n`` prompts (``copy_share`` of them copy/edit requests), each measured on both arms."""
    rng = random.Random(seed)
    out = Profiles([], {}, {}, {}, {})
    for i in range(n):
        pid = f"synthetic-{seed}/{i:04d}"
        text = copy_prompt(rng) if rng.random() < copy_share else free_prompt(rng)
        vector = prompt_vector(ENCODER, text)
        c = float(vector[COPYABILITY])
        out.vectors[pid], out.kchars[pid], out.texts[pid], out.copyability[pid] = vector, len(text) / 1000, text, c
        correct = rng.random() < 0.3
        tokens = rng.randint(60, 300)
        for arm, speedup in ((PLAIN, 1.0), (NGRAM, true_speedup(c))):
            tps = BASE_TPS * speedup * math.exp(rng.gauss(0.0, NOISE))
            ttft = 0.12 * math.exp(rng.gauss(0.0, NOISE))
            out.rows.append(Row(pid, "synthetic", "train", arm, correct, tokens, ttft, tps, ttft + tokens / tps))
    return out
