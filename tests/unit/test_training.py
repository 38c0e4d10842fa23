"""Training determinism, recovery of a planted signal, artifact round trip and refusal."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from router.artifact import ArtifactError, load_artifact, save_artifact
from router.linear import fit_logistic, fit_ridge, log_loss, predict_logistic
from router.training import Row, auc, latest_rows, train


def synthetic(n: int = 120, seed: int = 1) -> tuple[list[Row], dict[str, np.ndarray], dict[str, float]]:
    """Arm 'maths' is right when feature 0 > 0; arm 'chat' is right on a coin flip; chat is 3x faster."""
    rng = np.random.default_rng(seed)
    rows, vectors, kchars = [], {}, {}
    for i in range(n):
        pid = f"t/{i:04d}"
        v = rng.normal(size=4)
        vectors[pid], kchars[pid] = v, 0.2
        rows.append(Row(pid, "t", "train", "maths", bool(v[0] > 0), 100 + int(50 * v[1] > 0), 0.5, 20.0, 5.5))
        rows.append(Row(pid, "t", "train", "chat", bool(rng.random() < 0.3), 40, 0.1, 60.0, 0.8))
    return rows, vectors, kchars


def test_training_is_deterministic_and_learns_the_signal() -> None:
    rows, vectors, kchars = synthetic()
    m1, r1 = train(rows, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    m2, r2 = train(rows, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    assert np.array_equal(m1.arms["maths"].quality_w, m2.arms["maths"].quality_w)
    assert r1 == r2
    assert r1["arms"]["maths"]["quality_auc"] > 0.9  # out-of-fold, so not memorised
    assert r1["arms"]["maths"]["quality_log_loss"] < r1["arms"]["maths"]["quality_base_log_loss"]
    assert m1.arms["chat"].median_tokens_per_s == pytest.approx(60.0)
    levels = m1.calibration.accuracy_levels
    assert 0 <= levels["high"] <= levels["medium"] <= levels["low"] <= 1  # allowed shortfalls from the best arm


def test_artifact_round_trip_and_refusals(tmp_path: Path) -> None:
    rows, vectors, kchars = synthetic(60)
    model, report = train(rows, vectors, kchars, "enc-v1", ["a", "b", "c", "d"], seed=0)
    save_artifact(model, tmp_path / "art", {"validation": report})
    loaded = load_artifact(tmp_path / "art", encoder="enc-v1", arms=["maths", "chat"])
    assert np.array_equal(loaded.arms["maths"].quality_w, model.arms["maths"].quality_w)
    assert loaded.calibration == model.calibration

    with pytest.raises(ArtifactError, match="encoder"):
        load_artifact(tmp_path / "art", encoder="enc-v2")
    with pytest.raises(ArtifactError, match="no predictor for arm"):
        load_artifact(tmp_path / "art", arms=["maths", "other"])

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "art", corrupt)
    data = bytearray((corrupt / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_artifact(corrupt)

    wrong = tmp_path / "wrong"
    shutil.copytree(tmp_path / "art", wrong)
    doc = json.loads((wrong / "router.json").read_text())
    doc["format"] = "something-else"
    (wrong / "router.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="format"):
        load_artifact(wrong)
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "missing")


def test_weights_file_is_not_pickle(tmp_path: Path) -> None:
    rows, vectors, kchars = synthetic(30)
    model, _ = train(rows, vectors, kchars, "enc", ["a", "b", "c", "d"])
    save_artifact(model, tmp_path, {})
    with np.load(tmp_path / "weights.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype == np.float64 for k in npz.files)


def test_logistic_separable_and_single_class() -> None:
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    w = fit_logistic(x, np.array([0, 0, 1, 1.0]), l2=0.1)
    p = predict_logistic(w, x)
    assert p[0] < 0.2 and p[-1] > 0.8
    w1 = fit_logistic(x, np.ones(4), l2=1.0)
    assert np.all(w1[:-1] == 0) and predict_logistic(w1, x)[0] > 0.8


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
        ([0.1, 0.2], [1, 1], None),
    ],
)
def test_auc(scores, labels, expected) -> None:
    assert auc(np.array(scores), np.array(labels)) == expected


def test_the_last_row_of_a_prompt_and_arm_wins() -> None:
    def row(pid: str, arm: str, e2e: float) -> Row:
        return Row(pid, "gsm8k", "train", arm, True, 10, 0.1, 20.0, e2e)

    rows = [row("p1", "a", 1.0), row("p1", "b", 2.0), row("p2", "a", 3.0), row("p1", "a", 4.0)]
    latest = latest_rows(rows)
    got = sorted((r.prompt_id, r.arm, r.e2e_s) for r in latest)
    assert got == [("p1", "a", 4.0), ("p1", "b", 2.0), ("p2", "a", 3.0)]


def test_a_knn_quality_head_is_chosen_where_the_linear_one_cannot_see_the_signal(tmp_path: Path) -> None:
    """Right exactly when features 0 and 1 have the same sign (XOR): no linear head can separate it,
    neighbours can. Training must pick kNN for that arm, keep logistic for a linear one, and the
    artifact must round-trip the neighbours."""
    rng = np.random.default_rng(5)
    rows, vectors, kchars = [], {}, {}
    for i in range(400):
        pid = f"x/{i:04d}"
        v = rng.normal(size=3)
        vectors[pid], kchars[pid] = v, 0.2
        rows.append(Row(pid, "x", "train", "xor", bool(v[0] * v[1] > 0), 50, 0.1, 30.0, 2.0))
        rows.append(Row(pid, "x", "train", "linear", bool(v[2] > 0), 50, 0.1, 30.0, 2.0))
    model, report = train(rows, vectors, kchars, "enc", ["a", "b", "c"], seed=0)
    assert report["arms"]["xor"]["quality_head"].startswith("knn-")
    assert report["arms"]["linear"]["quality_head"] == "logistic"
    assert report["arms"]["xor"]["quality_auc"] > 0.8
    x = model.standardise(np.array([1.5, 1.5, 0.0]))
    y = model.standardise(np.array([1.5, -1.5, 0.0]))
    live = [("xor", 1.0, 1.0, 1.0)]
    assert (
        model.predict(x, 0.2, None, live)["xor"].quality > 0.7 > 0.3 > model.predict(y, 0.2, None, live)["xor"].quality
    )
    save_artifact(model, tmp_path / "art", {})
    loaded = load_artifact(tmp_path / "art")
    assert loaded.predict(x, 0.2, None, live) == model.predict(x, 0.2, None, live)


def test_a_sample_weight_is_the_row_repeated() -> None:
    """Weighted ridge and logistic fits equal the unweighted fits on rows repeated weight times."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    y_lin = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.3, size=40)
    y_bin = (x[:, 0] + rng.normal(scale=1.0, size=40) > 0).astype(float)
    weight = rng.integers(1, 4, size=40).astype(float)
    repeated = np.repeat(np.arange(40), weight.astype(int))
    assert np.allclose(
        fit_ridge(x, y_lin, 3.0, weight=weight), fit_ridge(x[repeated], y_lin[repeated], 3.0), atol=1e-10
    )
    assert np.allclose(
        fit_logistic(x, y_bin, 3.0, weight=weight), fit_logistic(x[repeated], y_bin[repeated], 3.0), atol=1e-8
    )
    assert np.array_equal(fit_ridge(x, y_lin, 3.0, weight=None), fit_ridge(x, y_lin, 3.0))
    assert log_loss(np.full(40, 0.3), y_bin, weight) == pytest.approx(
        log_loss(np.full(len(repeated), 0.3), y_bin[repeated])
    )


def test_training_weights_default_to_one_and_move_the_fit() -> None:
    rows, vectors, kchars = synthetic(80)
    plain, _ = train(rows, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    ones, _ = train(rows, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0, weights={})
    assert np.allclose(plain.arms["maths"].quality_w, ones.arms["maths"].quality_w)
    assert np.allclose(plain.arms["chat"].length_w, ones.arms["chat"].length_w)
    # the chat arm's right answers weigh 20: its predicted quality rises
    heavy = {(r.prompt_id, r.arm): 20.0 for r in rows if r.arm == "chat" and r.correct}
    weighted, _ = train(rows, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0, weights=heavy)
    assert weighted.arms["chat"].quality_w[-1] > plain.arms["chat"].quality_w[-1] + 1.0


def test_rows_without_a_ttft_count_for_all_but_the_ttft_line() -> None:
    rows, vectors, kchars = synthetic(60)
    unmeasured = [replace(r, ttft_s=float("nan")) if i % 2 else r for i, r in enumerate(rows)]
    model, report = train(unmeasured, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    assert model.arms["maths"].median_ttft_s == pytest.approx(0.5)
    assert np.isfinite(model.arms["chat"].ttft_intercept_s)
    assert report["arms"]["maths"]["rows"] == 60
    only_nan = [replace(r, ttft_s=float("nan")) if r.arm == "chat" else r for r in rows]
    model, _ = train(only_nan, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    assert model.arms["chat"].median_ttft_s == 0.0 and model.arms["chat"].ttft_intercept_s == 0.0


def test_ttft_is_never_predicted_below_what_short_prompts_take() -> None:
    """CPU prefill is flat for short prompts and steep for long ones: the least-squares line crosses
    zero, the floor (median TTFT of the shortest quarter) keeps short prompts' forecasts positive."""
    rows, vectors, _ = synthetic(80)
    kchars = {pid: 0.1 + 0.05 * i for i, pid in enumerate(vectors)}  # 0.1 .. 4 kchars

    def ttft(k: float) -> float:
        return 0.3 + 4.0 * max(0.0, k - 2.0)

    hinge = [replace(r, ttft_s=ttft(kchars[r.prompt_id])) for r in rows]
    model, _ = train(hinge, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    arm = model.arms["maths"]
    assert arm.ttft_floor_s == pytest.approx(0.3)
    shortest = min(kchars.values())
    p = arm.forecast(0.0, 0.0, 0.0, shortest, None)
    assert p.ttft_s >= 0.3 and arm.ttft_intercept_s + arm.ttft_per_kchar_s * shortest < p.ttft_s
