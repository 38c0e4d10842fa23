"""``make-variant --heal`` / ``heal-variant``, lab side: option validation and the hand-off to the
builder and the healer (a fake backend Python records its argv; no torch). The healer's pure
helpers (data order, learning-rate schedule, held-out split) are tested here too: they need no torch.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from lab.variant import BUILD, HEAL
from variants import distill
from variants import heal_data as hd

FAKE_PYTHON = """#!{python}
import json, sys
args = sys.argv[1:]
data = None
for flag in ("--calibration-json", "--healing-json"):
    if flag in args:
        data = json.load(open(args[args.index(flag) + 1]))
with open({record!r}, "a") as fh:
    fh.write(json.dumps({{"argv": args, "data": data}}) + "\\n")
if "--variant" not in args:  # the builder: leave a pruned checkpoint behind
    out = args[args.index("--out") + 1]
    import os
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "variant.json"), "w").write("{{}}")
sys.exit({rc})
"""


def _fake_python(tmp_path: Path, rc: int = 0) -> tuple[Path, Path]:
    record = tmp_path / "record.jsonl"
    script = tmp_path / "python"
    script.write_text(FAKE_PYTHON.format(python=sys.executable, record=str(record), rc=rc))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def _calls(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def _model(tmp_path: Path, name: str = "model") -> Path:
    model = tmp_path / name
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_make_variant_heal_builds_into_the_work_folder_then_heals(tmp_path: Path) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\ntwo\nthree\n")
    model, out = _model(tmp_path), tmp_path / "out"
    rc = _run(
        [
            *("make-variant", "--model", str(model), "--out", str(out), "--drop", "4", "--python", str(python)),
            *("--calibration-file", str(cal), "--heal", "--steps", "7", "--lr", "2e-4", "--heal-file", str(cal)),
            *("--heal-samples", "2", "--seed", "3"),
        ]
    )
    assert rc == 0
    build, heal = _calls(record)
    assert tuple(build["argv"][:3]) == BUILD
    pruned = tmp_path / "out.heal-work" / "pruned"
    assert _opt(build["argv"], "--out") == str(pruned)
    assert "--allow-failing-smoke" in build["argv"]  # the smoke test applies after healing
    h = heal["argv"]
    assert tuple(h[:3]) == HEAL
    assert _opt(h, "--teacher") == str(model) and _opt(h, "--variant") == str(pruned) and _opt(h, "--out") == str(out)
    assert _opt(h, "--steps") == "7" and _opt(h, "--lr") == "0.0002" and _opt(h, "--seed") == "3"
    assert _opt(h, "--batch-size") == "4" and _opt(h, "--seq-len") == "320"  # defaults filled in
    assert _opt(h, "--work-dir") == str(tmp_path / "out.heal-work") and _opt(h, "--task") == "file"
    assert "--allow-failing-smoke" not in h and "--heal-samples" not in h
    assert [p["messages"][0]["content"] for p in heal["data"]["prompts"]] == ["one", "two"]


def test_a_rerun_reuses_the_pruned_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\ntwo\n")
    argv = ["make-variant", "--model", str(_model(tmp_path)), "--out", str(tmp_path / "out"), "--drop", "2"]
    argv += ["--python", str(python), "--calibration-file", str(cal), "--heal", "--heal-file", str(cal)]
    assert _run(argv) == 0 and _run(argv) == 0
    assert [tuple(c["argv"][:3]) for c in _calls(record)] == [BUILD, HEAL, HEAL]
    assert "reusing the pruned model" in capsys.readouterr().out


def test_a_failing_build_stops_before_healing(tmp_path: Path) -> None:
    python, record = _fake_python(tmp_path, rc=3)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\ntwo\n")
    rc = _run(
        [
            *("make-variant", "--model", str(_model(tmp_path)), "--out", str(tmp_path / "o"), "--drop", "2"),
            *("--python", str(python), "--calibration-file", str(cal), "--heal", "--heal-file", str(cal)),
        ]
    )
    assert rc == 3 and len(_calls(record)) == 1


def test_make_variant_without_heal_passes_allow_failing_smoke(tmp_path: Path) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\n")
    base = ["make-variant", "--model", str(_model(tmp_path)), "--drop", "2", "--python", str(python)]
    base += ["--calibration-file", str(cal)]
    assert _run([*base, "--out", str(tmp_path / "a")]) == 0
    assert _run([*base, "--out", str(tmp_path / "b"), "--allow-failing-smoke"]) == 0
    first, second = _calls(record)
    assert "--allow-failing-smoke" not in first["argv"] and "--allow-failing-smoke" in second["argv"]
    assert _opt(first["argv"], "--out") == str(tmp_path / "a")


def test_heal_variant_command(tmp_path: Path) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\ntwo\nthree\n")
    teacher, variant = _model(tmp_path, "teacher"), _model(tmp_path, "variant")
    rc = _run(
        [
            *("heal-variant", "--teacher", str(teacher), "--variant", str(variant), "--out", str(tmp_path / "h")),
            *("--python", str(python), "--heal-file", str(cal), "--batch-size", "2", "--ce-weight", "0"),
            *("--allow-failing-smoke", "--restart", "--cache-dir", str(tmp_path / "cache")),
        ]
    )
    assert rc == 0
    (call,) = _calls(record)
    h = call["argv"]
    assert tuple(h[:3]) == HEAL and _opt(h, "--teacher") == str(teacher) and _opt(h, "--variant") == str(variant)
    assert _opt(h, "--batch-size") == "2" and _opt(h, "--ce-weight") == "0.0"
    assert _opt(h, "--cache-dir") == str(tmp_path / "cache")
    assert "--allow-failing-smoke" in h and "--restart" in h
    assert len(call["data"]["prompts"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--seq-len", "8"], "--seq-len must be >= 16, got 8"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--lr", "0"], "--lr must be >= "),
        (["--ce-weight", "-1"], "--ce-weight must be >= 0"),
        (["--heal-samples", "1"], "--heal-samples must be >= 2"),
        (["--save-every", "0"], "--save-every must be >= 1"),
    ],
)
def test_bad_healing_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    python, record = _fake_python(tmp_path)
    argv = ["heal-variant", "--teacher", str(_model(tmp_path, "t")), "--variant", str(_model(tmp_path, "v"))]
    rc = _run([*argv, "--out", str(tmp_path / "h"), "--python", str(python), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not record.exists()


def test_healing_options_need_heal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\n")
    argv = ["make-variant", "--model", str(_model(tmp_path)), "--out", str(tmp_path / "o"), "--drop", "2"]
    rc = _run([*argv, "--python", str(python), "--calibration-file", str(cal), "--steps", "5", "--task", "gsm8k"])
    assert rc == 2
    assert "--steps, --task: healing options need --heal" in capsys.readouterr().err
    assert not record.exists()


def test_heal_variant_needs_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    python, _ = _fake_python(tmp_path)
    rc = _run(
        [
            *("heal-variant", "--teacher", str(tmp_path / "none"), "--variant", str(_model(tmp_path, "v"))),
            *("--out", str(tmp_path / "h"), "--python", str(python)),
        ]
    )
    assert rc == 2 and "--teacher: no Hugging Face checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--task", "trivia"], ["--task", "gsm8k", "--heal-file", "x"]])
def test_task_choices_and_exclusions(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["heal-variant", "--teacher", "t", "--variant", "v", "--out", "o", *argv])


def test_batch_indices_are_seeded_epochs() -> None:
    n, b = 10, 4
    steps = [hd.batch_indices(n, b, s, seed=0) for s in range(5)]
    flat = [i for batch in steps for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # whole epochs
    assert flat[:10] != flat[10:20]  # a new order each epoch
    assert steps == [hd.batch_indices(n, b, s, seed=0) for s in range(5)]  # pure: resumable at any step
    assert steps != [hd.batch_indices(n, b, s, seed=1) for s in range(5)]
    assert hd.batch_indices(3, 5, 0, seed=0) and len(hd.batch_indices(3, 5, 0, seed=0)) == 5  # batch > data


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.25), (1, 0.5), (3, 1.0), (100, 1.0)],
)
def test_lr_warmup_then_constant(step: int, expected: float) -> None:
    assert distill.lr_at(step, 1.0, warmup=4) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "held"), [(2, [1]), (9, [8]), (20, [9, 19]), (25, [9, 19])])
def test_held_out_split(n: int, held: list[int]) -> None:
    train, got = hd.split_held_out(n)
    assert got == held and sorted(train + got) == list(range(n))


def test_unfinished_answers_counts_answers_cut_by_the_budget_or_the_sequence() -> None:
    eos = 2
    answers = [
        {"prompt_ids": [5, 6], "answer_ids": [7, 8, eos]},  # complete
        {"prompt_ids": [5, 6], "answer_ids": [7, 8, 9]},  # the teacher hit --answer-tokens
        {"prompt_ids": [5, 6, 7, 8], "answer_ids": [9, 10, 11, eos]},  # --seq-len 6 cuts it
        {"prompt_ids": [5], "answer_ids": []},  # nothing to learn the end from
    ]
    assert hd.unfinished_answers(answers, hd.make_sequences(answers, 6), {eos}) == 3
    assert hd.unfinished_answers(answers, hd.make_sequences(answers, 64), {eos}) == 2


def test_make_sequences_keeps_the_answer() -> None:
    answers = [{"prompt_ids": list(range(10)), "answer_ids": [100, 101, 102]}]
    assert hd.make_sequences(answers, 20) == [([*range(10), 100, 101, 102], 10)]
    ids, start = hd.make_sequences(answers, 8)[0]
    assert ids == [6, 7, 8, 9, 100, 101, 102] and start == 4  # long prompt: its tail kept
