"""What the learned router is compared with in ``llm-gateway evaluate``, besides the fixed arms.

Every prompt was answered by every arm, so a routing rule is scored exactly by reading the chosen
arm's real outcome. The baselines here are the rules a reviewer would ask about:

* **task rule** — per task family, fitted on the training prompts only: the arm with the best
  training accuracy (ties, and tasks without labels, go to the lowest mean latency);
* **kNN** — the k nearest training prompts in the router's own standardised feature space, their
  per-arm mean correctness and mean / p90 end-to-end latency as the forecast;
* **oracle** — the fastest correct arm per prompt (within the latency budget when there is one).

Task rule and kNN only *forecast* per-arm quality and latency (:class:`Forecast`); the evaluation
hands those forecasts to the router's own decision code for the flag setting
(:func:`router.evaluation.evaluate`), with the forecast p90 latency as the bound a budget is checked
against, so a difference between them and the router is a difference in forecasts, not in rules.
:func:`choose` is the same rule written out, used for policies whose decision cannot be fed other
forecasts. Random mixing at the router's arm shares is computed exactly in :mod:`router.evaluation`
(its expectation per prompt).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router.linear import Array
from router.training import Row


@dataclass(frozen=True)
class Outcomes:
    """The real outcomes of every arm on a set of prompts (rows: prompts, columns: arms).

    ``correct`` is 1/0, NaN for a prompt that is not labelled for every arm (e.g. chat prompts):
    those count for latency only.
    """

    ids: list[str]
    tasks: list[str]
    correct: Array
    e2e_s: Array
    ttft_s: Array

    @property
    def labelled(self) -> NDArray[np.bool_]:
        return np.asarray(~np.isnan(self.correct).any(axis=1), dtype=np.bool_)


def outcomes(rows: Sequence[Row], arms: Sequence[str], keep: Mapping[str, Any] | None = None) -> Outcomes:
    """Outcomes of the prompts that have a row for every arm (and, with ``keep``, an entry in it), sorted by id."""
    by_prompt: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in rows:
        by_prompt[r.prompt_id][r.arm] = r
    ids = sorted(p for p, got in by_prompt.items() if all(a in got for a in arms) and (keep is None or p in keep))
    correct = np.full((len(ids), len(arms)), np.nan)
    e2e = np.zeros((len(ids), len(arms)))
    ttft = np.zeros((len(ids), len(arms)))
    for i, p in enumerate(ids):
        got = by_prompt[p]
        labels = [got[a].correct for a in arms]
        if all(v is not None for v in labels):
            correct[i] = [1.0 if v else 0.0 for v in labels]
        e2e[i] = [got[a].e2e_s for a in arms]
        ttft[i] = [got[a].ttft_s for a in arms]
    tasks = [by_prompt[p][arms[0]].task for p in ids] if arms else ["" for _ in ids]
    return Outcomes(ids=ids, tasks=tasks, correct=correct, e2e_s=e2e, ttft_s=ttft)


@dataclass(frozen=True)
class Forecast:
    """A baseline's per-arm forecasts, ``(prompts, arms)`` each: P(correct) (NaN: unknown), mean and
    p90 end-to-end seconds, mean and p90 seconds to the first token."""

    quality: Array
    latency_s: Array
    latency_p90_s: Array
    ttft_s: Array
    ttft_p90_s: Array


@dataclass(frozen=True)
class Rule:
    """A flag setting's decision rule, applied to forecasts (mirrors :meth:`router.learned.LearnedPolicy.decide`).

    Keep arms whose forecast quality ≥ ``floor`` and whose forecast p90 latency ≤ ``budget_s``;
    among them ``quality`` takes the most accurate (ties: less mean latency), ``speed`` the least
    mean latency, ``balanced`` the highest ``quality - weight * latency``. None kept: the fastest arm
    meeting the floor (by p90 under a budget), else the most accurate. Ties go to arm order.
    """

    prefer: str = "balanced"
    floor: float | None = None
    budget_s: float | None = None
    weight: float = 0.0


def choose(forecast: Forecast, rule: Rule) -> list[int]:
    """Arm index per prompt under ``rule`` (NaN quality: unknown, taken as 0)."""
    picks = []
    quality = np.nan_to_num(forecast.quality, nan=0.0)
    for q_row, lat, tail in zip(quality, forecast.latency_s, forecast.latency_p90_s, strict=True):
        q, arms = q_row.tolist(), range(len(q_row))
        accurate = [j for j in arms if rule.floor is None or q[j] >= rule.floor]
        feasible = [j for j in accurate if rule.budget_s is None or tail[j] <= rule.budget_s]
        if feasible:
            if rule.prefer == "quality":
                pick = min(feasible, key=lambda j: (-q[j], lat[j], j))
            elif rule.prefer == "speed":
                pick = min(feasible, key=lambda j: (lat[j], j))
            else:
                pick = min(feasible, key=lambda j: (-(q[j] - rule.weight * lat[j]), j))
        elif accurate:
            pick = min(accurate, key=lambda j: (tail[j] if rule.budget_s is not None else lat[j], j))
        else:
            pick = min(arms, key=lambda j: (-q[j], lat[j], j))
        picks.append(pick)
    return picks


def _stats(train: Outcomes, rows: NDArray[np.bool_]) -> tuple[Array, ...]:
    """Per-arm accuracy (labelled prompts among ``rows``; NaN if none), mean and p90 latency and TTFT."""
    lab = rows & train.labelled
    acc = train.correct[lab].mean(axis=0) if lab.any() else np.full(train.correct.shape[1], np.nan)
    e2e, ttft = train.e2e_s[rows], train.ttft_s[rows]
    return acc, e2e.mean(axis=0), np.percentile(e2e, 90, axis=0), ttft.mean(axis=0), np.percentile(ttft, 90, axis=0)


def task_forecasts(train: Outcomes, tasks: Sequence[str]) -> Forecast:
    """Task-family forecasts for prompts of ``tasks``: per arm, the training prompts' accuracy on the
    same task, mean and p90 latency (a task absent from training: all training prompts)."""
    if not train.ids:
        raise ValueError("the task rule needs training prompts")
    task_arr = np.array(train.tasks)
    table = {t: _stats(train, task_arr == t) for t in set(train.tasks)}
    overall = _stats(train, np.ones(len(train.ids), dtype=np.bool_))
    got = [table.get(t, overall) for t in tasks]
    n_arms = train.e2e_s.shape[1]
    parts = [np.stack([g[i] for g in got]) if got else np.zeros((0, n_arms)) for i in range(5)]
    return Forecast(*parts)


def knn_forecasts(train: Outcomes, train_x: Array, test_x: Array, k: int = 10) -> Forecast:
    """kNN forecasts: per test prompt, the mean correctness of its ``k`` nearest labelled training
    prompts, and the mean and p90 latency of its ``k`` nearest training prompts (Euclidean distance
    in the given vectors; ties by training order)."""
    if not train.ids:
        raise ValueError("kNN needs training prompts")
    a2 = (test_x**2).sum(axis=1)[:, None]
    b2 = (train_x**2).sum(axis=1)[None, :]
    dist = np.maximum(a2 + b2 - 2 * test_x @ train_x.T, 0.0)
    near = np.argsort(dist, axis=1, kind="stable")[:, :k]
    e2e, ttft = train.e2e_s[near], train.ttft_s[near]  # (prompts, k, arms)
    lab = np.flatnonzero(train.labelled)
    if len(lab):
        near_lab = lab[np.argsort(dist[:, lab], axis=1, kind="stable")[:, :k]]
        quality = train.correct[near_lab].mean(axis=1)
    else:
        quality = np.full((len(test_x), train.e2e_s.shape[1]), np.nan)
    return Forecast(
        quality=quality,
        latency_s=e2e.mean(axis=1),
        latency_p90_s=np.percentile(e2e, 90, axis=1),
        ttft_s=ttft.mean(axis=1),
        ttft_p90_s=np.percentile(ttft, 90, axis=1),
    )


def oracle_picks(test: Outcomes, budget_s: float | None = None) -> list[int]:
    """The fastest correct arm per prompt, the fastest arm when none is correct (or the prompt is
    unlabelled); with a budget, only arms whose actual latency fits it, when any does."""
    picks = []
    for corr, lat in zip(test.correct, test.e2e_s, strict=True):
        pool = list(range(len(lat)))
        if budget_s is not None:
            pool = [j for j in pool if lat[j] <= budget_s] or pool
        right = [j for j in pool if corr[j] == 1.0]
        picks.append(min(right or pool, key=lambda j: (lat[j], j)))
    return picks
