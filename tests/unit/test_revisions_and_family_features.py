"""loadtests.revisions' paired statistics and lab.family_features' leak-free augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from lab.family_features import FamilyFeatures
from loadtests.revisions import ratio_ci, summary


def test_paired_ratios_are_per_round_and_the_interval_covers_their_geometric_mean() -> None:
    res = {"m": {"a": [1.0, 2.0, 1.0, 2.0], "b": [1.1, 2.2, 1.1, 2.2]}}
    s = summary(res, ["a", "b"])["m"]
    assert s["b"]["ratio_median"] == pytest.approx(1.1)  # paired: the rounds' own spread cancels
    assert s["b"]["ratio_ci95"] == pytest.approx([1.1, 1.1])
    assert s["a"]["ratio_geomean"] == pytest.approx(1.0)
    gm, lo, hi = ratio_ci([0.9, 1.0, 1.1, 1.2, 1.05])
    assert lo < gm < hi
    assert lo >= 0.9 and hi <= 1.2


def _vectors(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    rng = np.random.default_rng(seed)
    vectors, family = {}, {}
    for i in range(n):
        fam = "maths" if i % 2 else "chat"
        vectors[f"p{i:03d}"] = rng.normal(size=4) + (3.0 if fam == "maths" else 0.0)
        family[f"p{i:03d}"] = fam
    return vectors, family


def test_family_probabilities_are_appended_and_separate_the_families() -> None:
    vectors, family = _vectors(80)
    ids = sorted(vectors)
    hook = FamilyFeatures(family, seed=0)
    out, names = hook(vectors, ids[:60], ids[60:])
    assert names == ("family_chat", "family_maths")
    assert all(out[i].shape == (6,) and out[i][-2:].sum() == pytest.approx(1.0) for i in ids)
    assert np.mean(hook.held_out_hits) > 0.9


def test_held_out_prompts_do_not_see_their_own_family_labels() -> None:
    vectors, family = _vectors(80)
    ids = sorted(vectors)
    flipped = {i: ("chat" if f == "maths" else "maths") if i in ids[60:] else f for i, f in family.items()}
    a, _ = FamilyFeatures(family, seed=0)(vectors, ids[:60], ids[60:])
    b, _ = FamilyFeatures(flipped, seed=0)(vectors, ids[:60], ids[60:])
    for i in ids:
        np.testing.assert_allclose(a[i], b[i])


def test_revisions_refuses_an_unknown_mode_before_starting_anything() -> None:
    from loadtests.revisions import main

    with pytest.raises(SystemExit) as info:
        main(["HEAD", "--modes", "auto-stream,bogus"])
    assert info.value.code == 2
