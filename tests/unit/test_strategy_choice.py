"""The strategy-choice report's baselines: the task-family rule (out of fold) and the noise-only oracle."""

from __future__ import annotations

import numpy as np

from loadtests.strategy_choice import family_rule
from loadtests.strategy_noise import noise_oracle
from router.training import Row


def _row(pid: str, arm: str, tps: float, tokens: int = 101, task: str = "chat") -> Row:
    return Row(pid, task, "test", arm, None, tokens, 0.1, tps, tokens / tps)


def test_family_rule_picks_each_familys_faster_arm_from_the_other_folds() -> None:
    tasks = np.array(["copy"] * 6 + ["free"] * 6)
    folds = np.array([0, 1, 2] * 4)
    tokens = np.full((12, 2), 100.0)
    measured = np.where(tasks[:, None] == "copy", [20.0, 40.0], [30.0, 25.0])
    assert family_rule(tokens, measured, tasks, folds).tolist() == [1] * 6 + [0] * 6


def test_family_rule_never_sees_the_held_out_fold() -> None:
    # fold 0's own prompts say arm 1; the other folds say arm 0: out of fold, fold 0 gets arm 0
    tasks = np.array(["t"] * 6)
    folds = np.array([0, 0, 1, 1, 2, 2])
    measured = np.array([[10.0, 90.0], [10.0, 90.0], [30.0, 20.0], [30.0, 20.0], [30.0, 20.0], [30.0, 20.0]])
    choice = family_rule(np.full((6, 2), 50.0), measured, tasks, folds)
    assert choice[:2].tolist() == [0, 0]
    assert choice[2:].tolist() == [1, 1, 1, 1]  # folds 1 and 2 see fold 0's arm-1 win in the sums


def _runs(noise_sd: float, n: int = 200, seed: int = 1) -> tuple[dict[str, dict[str, Row]], list[Row]]:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(20, 40, n)
    first = {f"p{i}": {"plain": _row(f"p{i}", "plain", truth[i] * np.exp(rng.normal(0, noise_sd)))} for i in range(n)}
    second = [_row(f"p{i}", "plain", truth[i] * np.exp(rng.normal(0, noise_sd))) for i in range(n)]
    return first, second


def test_noise_oracle_is_one_without_noise_and_grows_with_noise_and_arms() -> None:
    exact = noise_oracle(*_runs(0.0), arm="plain", arms=4, seed=0)
    assert exact is not None and abs(exact["gain"][0] - 1.0) < 1e-9
    small = noise_oracle(*_runs(0.05), arm="plain", arms=4, seed=0)
    large = noise_oracle(*_runs(0.2), arm="plain", arms=4, seed=0)
    two = noise_oracle(*_runs(0.2), arm="plain", arms=2, seed=0)
    assert small is not None and large is not None and two is not None
    assert 1.0 < small["gain"][0] < large["gain"][0]
    assert 1.0 < two["gain"][0] < large["gain"][0]
    # one run's log noise sd 0.2: the between-run sd is 0.2 * sqrt(2)
    assert abs(large["log_sd_between_runs"] - 0.2 * np.sqrt(2)) < 0.05


def test_noise_oracle_needs_enough_common_prompts() -> None:
    first, second = _runs(0.1, n=10)
    assert noise_oracle(first, second, "plain", 4, 0) is None


def test_paired_speed_heads_learn_a_known_copy_speed_relation() -> None:
    from loadtests.paired_speed import paired_choice

    rng = np.random.default_rng(0)
    code = "def total(items):\n    s = 0\n    for i in items:\n        s += i.price * i.qty\n    return s\n"
    rows: dict[str, dict[str, Row]] = {}
    texts: dict[str, str] = {}
    for i in range(60):
        copy = i % 2 == 0
        pid = f"{'rename' if copy else 'chat'}/{i:03d}"
        edit = f"Rename s to acc {i} and return the code:\n{code * (1 + i % 3)}"
        texts[pid] = edit if copy else f"Tell me a story {i}."
        plain = 30.0 * np.exp(rng.normal(0, 0.05))
        spec = plain * (2.0 if copy else 0.8) * np.exp(rng.normal(0, 0.05))
        rows[pid] = {"plain": _row(pid, "plain", plain), "spec": _row(pid, "spec", spec)}
    pids = sorted(rows)
    folds = np.array([i % 5 for i in range(len(pids))])
    choice = paired_choice(rows, texts, ["plain", "spec"], pids, folds)
    copy = np.array([p.startswith("rename") for p in pids])
    assert choice[copy].mean() > 0.9  # speculation where the answer copies the prompt
    assert choice[~copy].mean() < 0.1  # plain on free text
