"""Offline prompt sets: stable ids, a split that is a fixed function of the id, deterministic samples.

Tests that read a data package skip (saying which) when it is not installed:
``scripts/install-datasets.sh`` installs them.
"""

from __future__ import annotations

from importlib import metadata

import pytest

from lab.datasets import DATA_PACKAGES, LOADERS, TASKS, Prompt, data_versions, load_prompts, split_of


def _need(task: str) -> None:
    try:
        metadata.distribution(DATA_PACKAGES[task])
    except metadata.PackageNotFoundError:
        pytest.skip(f"data package '{DATA_PACKAGES[task]}' for {task} not installed (scripts/install-datasets.sh)")


def test_split_is_a_fixed_function_of_the_id() -> None:
    assert split_of("gsm8k/00042") == split_of("gsm8k/00042")
    # pinned values: changing the split function would silently mix train and test across runs
    pinned = ["train", "train", "test", "test", "train", "train", "train", "train", "test", "test", "train", "test"]
    assert [split_of(f"gsm8k/{i:05d}") for i in range(12)] == pinned
    share = sum(split_of(f"mmlu/{i:05d}") == "test" for i in range(5000)) / 5000
    assert 0.17 < share < 0.23


def test_unknown_task_and_split_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        load_prompts(["nope"], 1)
    with pytest.raises(ValueError, match="unknown split"):
        load_prompts(["gsm8k"], 1, split="dev")


@pytest.mark.parametrize("task", TASKS)
def test_loader_shape(task: str) -> None:
    _need(task)
    prompts = LOADERS[task]()
    expected = {"gsm8k": 1319, "mmlu": 14042, "humaneval": 164, "mtbench": 80}[task]
    assert len(prompts) == expected
    ids = [p.id for p in prompts]
    assert len(set(ids)) == len(ids)
    for p in prompts[:50]:
        assert isinstance(p, Prompt) and p.task == task and p.id.startswith(task + "/")
        assert p.split == split_of(p.id)
        assert len(p.messages) == 1 and p.messages[0]["role"] == "user" and p.messages[0]["content"]
    if task == "gsm8k":
        assert all(float(p.reference) == float(p.reference) for p in prompts)
        assert "The answer is N." in prompts[0].messages[0]["content"]
    elif task == "mmlu":
        assert {p.reference for p in prompts} == {"A", "B", "C", "D"}
        assert "\nA. " in prompts[0].messages[0]["content"] and "\nD. " in prompts[0].messages[0]["content"]
    elif task == "humaneval":
        assert set(prompts[0].reference) == {"prompt", "test", "entry_point"}
        assert "```python" in prompts[0].messages[0]["content"]
    else:
        assert all(p.reference is None for p in prompts)


def test_gsm8k_reference_is_the_number_after_hashes() -> None:
    _need("gsm8k")
    first = LOADERS["gsm8k"]()[0]
    assert first.id == "gsm8k/00000" and first.reference == "18"  # Janet's ducks


def test_mmlu_skips_the_stray_header_rows_but_keeps_line_ids() -> None:
    _need("mmlu")
    prompts = LOADERS["mmlu"]()
    assert not any("answer_a" in p.messages[0]["content"] for p in prompts)
    assert prompts[-1].id == "mmlu/14043"


@pytest.mark.parametrize("task", TASKS)
def test_sample_is_deterministic_and_splits_are_disjoint(task: str) -> None:
    _need(task)
    a = load_prompts([task], 30, seed=0)
    assert [p.id for p in a] == [p.id for p in load_prompts([task], 30, seed=0)]
    assert [p.id for p in load_prompts([task], 10, seed=0)] == [p.id for p in a[:10]]  # larger extends smaller
    assert [p.id for p in load_prompts([task], 30, seed=1)] != [p.id for p in a]
    train = load_prompts([task], 40, seed=0, split="train")
    test = load_prompts([task], 40, seed=3, split="test")
    assert {p.split for p in train} == {"train"} and {p.split for p in test} == {"test"}
    assert not {p.id for p in train} & {p.id for p in test}
    assert len(test) == min(40, sum(p.split == "test" for p in LOADERS[task]()))


def test_data_versions_names_every_package() -> None:
    assert set(data_versions()) == set(DATA_PACKAGES.values())


@pytest.mark.parametrize(
    ("task", "first"),
    [
        ("gsm8k", ["gsm8k/01051", "gsm8k/00332", "gsm8k/00423", "gsm8k/00450"]),
        ("mmlu", ["mmlu/11760", "mmlu/04543", "mmlu/12290", "mmlu/04732"]),
        ("humaneval", ["humaneval/126", "humaneval/112", "humaneval/048", "humaneval/036"]),
        ("mtbench", ["mtbench/099", "mtbench/152", "mtbench/131", "mtbench/149"]),
    ],
)
def test_seed0_sample_is_pinned(task: str, first: list[str]) -> None:
    """Existing profiles were sampled this way: a change here breaks resuming and extending them."""
    _need(task)
    assert [p.id for p in load_prompts([task], 4, seed=0)] == first


def test_mmlu_circular_asks_each_item_under_two_orders_with_the_answer_moved() -> None:
    _need("mmlu")
    from router.prompt_ids import group_of

    prompts = load_prompts(["mmlu-circular"], 40, seed=3)
    assert len(prompts) == 40 and all(p.task == "mmlu-circular" for p in prompts)
    by_group: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_group.setdefault(group_of(p.id), []).append(p)
    assert all(len(v) == 2 for v in by_group.values()), "both orders of an item are sampled together"
    for first, second in by_group.values():
        assert first.reference != second.reference and first.split == second.split
        right = lambda p: p.text.split(f"\n{p.reference}. ")[1].split("\n")[0]  # noqa: E731
        assert right(first) == right(second), "the same answer text sits under two letters"


def test_copy_families_are_deterministic_and_keep_a_problem_in_one_split() -> None:
    _need("humaneval")
    from router.prompt_ids import group_of

    renames = LOADERS["rename"]()
    assert renames == LOADERS["rename"]() and len(renames) > 250
    splits: dict[str, set[str]] = {}
    for p in renames:
        splits.setdefault(group_of(p.id), set()).add(p.split)
        assert p.reference["old"] in p.text and p.reference["new"] not in p.reference["expected"].replace(
            p.reference["new"], ""
        )
    assert all(len(s) == 1 for s in splits.values())
    extracts = load_prompts(["extract"], 5)
    assert [p.id for p in extracts] == [p.id for p in load_prompts(["extract"], 5)]
    assert all(p.reference and all(line in p.text for line in p.reference) for p in extracts)
