"""Experiment: does telling the router each prompt's predicted task family help it route?

The task-family rule (told the true family) beats the learned router's default on the full arm set
by about half a second at equal accuracy (docs/router.md). One explanation would be that a linear
model on the prompt features cannot tell the families apart well enough. This experiment tests it:
a one-vs-rest logistic classifier over the same prompt vector predicts the family, and its
probabilities become extra features of every head. Cross-validated exactly as
``llm-gateway evaluate --cv`` (:func:`lab.evaluate.cross_validated`), with no leak: in each outer
fold the classifier is fitted on the fold's training prompts only, and the training prompts get
*inner* out-of-fold probabilities (what the heads are fitted on must look like what serving sees).

    .venv/bin/python -m lab.family_features --profiles profiles/router.jsonl \\
        profiles/router-qwen-ngram4.jsonl profiles/router-smollm2-ngram2-paired.jsonl \\
        profiles/router-smollm2-ngram6-paired.jsonl

Prints the family classifier's held-out accuracy and, for the router's default and a few flag
settings, accuracy and mean latency with and without the family features, each paired against the
task rule (95 % bootstrap intervals, as the evaluation report).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from lab import profiles
from lab.evaluate import arm_specs, cross_validated
from router.linear import fit_logistic, predict_logistic
from router.training import prompt_folds

SETTINGS = ("router:default", "router:quality", "router:accuracy=medium", "router:accuracy=high")


class FamilyFeatures:
    """The ``augment`` hook: predicted family probabilities appended to each prompt vector."""

    def __init__(self, family_of: dict[str, str], seed: int, folds: int = 5, l2: float = 3.0) -> None:
        self.family_of = family_of
        self.families = sorted(set(family_of.values()))
        self.seed, self.folds, self.l2 = seed, folds, l2
        self.held_out_hits: list[bool] = []

    def probabilities(self, vectors: dict[str, Any], fit_ids: list[str], apply_ids: list[str]) -> dict[str, Any]:
        x = np.stack([vectors[i] for i in fit_ids])
        mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        xs = (x - mean) / std
        a = (np.stack([vectors[i] for i in apply_ids]) - mean) / std
        p = np.zeros((len(apply_ids), len(self.families)))
        for j, fam in enumerate(self.families):
            y = np.array([1.0 if self.family_of[i] == fam else 0.0 for i in fit_ids])
            p[:, j] = predict_logistic(fit_logistic(xs, y, self.l2), a)
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-9)
        return {i: p[k] for k, i in enumerate(apply_ids)}

    def __call__(
        self, vectors: dict[str, Any], train_ids: list[str], test_ids: list[str]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        inner = prompt_folds(train_ids, self.folds, self.seed + 1)
        probs: dict[str, Any] = {}
        for f in range(self.folds):
            fit = [i for i in train_ids if inner[i] != f]
            probs.update(self.probabilities(vectors, fit, [i for i in train_ids if inner[i] == f]))
        test = self.probabilities(vectors, train_ids, test_ids)
        probs.update(test)
        for i, p in test.items():
            self.held_out_hits.append(self.families[int(np.argmax(p))] == self.family_of[i])
        out = {i: np.concatenate([vectors[i], probs[i]]) for i in (*train_ids, *test_ids)}
        return out, tuple(f"family_{f}" for f in self.families)


def _versus_task_rule(result: dict[str, Any], setting: str) -> str:
    point = next(p for p in result["points"] if p["name"] == setting)
    rule = setting.split(":", 1)[1]
    vs = next(d for d in result["differences"] if d["setting"] == setting and d["baseline"] == f"task-rule:{rule}")
    acc, acc_ci, lat, lat_ci = 100 * vs["accuracy"], vs["accuracy_ci"], vs["latency_s"], vs["latency_ci"]
    return (
        f"{100 * point['accuracy']:.1f} % at {point['latency_s']:.2f} s; vs task rule "
        f"{acc:+.1f} [{100 * acc_ci[0]:+.1f}, {100 * acc_ci[1]:+.1f}] points, "
        f"{lat:+.2f} [{lat_ci[0]:+.2f}, {lat_ci[1]:+.2f}] s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.family_features", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", nargs="+", required=True, help="profile JSONL files (as llm-gateway evaluate)")
    ap.add_argument("--cv", type=int, default=5, help="outer folds")
    ap.add_argument("--seed", type=int, default=0, help="fold and bootstrap seed")
    a = ap.parse_args(argv)
    data = profiles.load(a.profiles)
    family_of = {r.prompt_id: r.task for r in data.rows}
    specs = arm_specs(data.arm_labels)
    print("==> without family features", flush=True)
    base = cross_validated(data.rows, data.texts, a.cv, a.seed, "none", specs)
    print("==> with predicted family probabilities as features", flush=True)
    hook = FamilyFeatures(family_of, a.seed)
    fam = cross_validated(data.rows, data.texts, a.cv, a.seed, "none", specs, augment=hook)
    hits = 100 * np.mean(hook.held_out_hits)
    print(f"\nfamily classifier, held-out accuracy: {hits:.1f} % ({len(hook.families)} families)")
    for setting in SETTINGS:
        print(f"{setting}\n  without: {_versus_task_rule(base, setting)}\n  with:    {_versus_task_rule(fam, setting)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
