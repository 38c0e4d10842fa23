"""Log output: ``json`` is one JSON object per line, fields merged; ``configure`` replaces its own handler."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli, logs
from gateway.settings import Settings


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_record_is_one_json_line_with_its_fields() -> None:
    record = logging.LogRecord("gateway.requests", logging.INFO, __file__, 1, "request %s", ("finished",), None)
    record.fields = {"status": 200, "arm": "a", "ttft_s": None}

    line = logs.JsonFormatter().format(record)

    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "info" and doc["logger"] == "gateway.requests" and doc["message"] == "request finished"
    assert (doc["status"], doc["arm"], doc["ttft_s"]) == (200, "a", None)
    assert doc["ts"].endswith("Z") and "T" in doc["ts"]


def test_an_exception_is_a_traceback_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    doc = json.loads(logs.JsonFormatter().format(record))
    assert "ValueError: boom" in doc["traceback"] and doc["level"] == "error"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_writes_every_logger_in_the_format(
    fmt: logs.LogFormat, root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", fmt)
    logs.configure("info", fmt)  # twice: still one line per record
    logging.getLogger("uvicorn.error").info("started")
    logging.getLogger("gateway.app").debug("not at info")

    [line] = capsys.readouterr().err.splitlines()
    if fmt == "json":
        assert json.loads(line)["message"] == "started" and json.loads(line)["logger"] == "uvicorn.error"
    else:
        assert line.endswith("INFO uvicorn.error: started")


CONFIG = """
backends: [{name: b, url: "http://127.0.0.1:9", served_model: m}]
arms: [{name: a, model: m, backends: [b]}]
server: {log_format: text}
"""


@pytest.mark.parametrize(("argv", "fmt"), [([], "text"), (["--log-format", "json"], "json")])
def test_serve_log_format_overrides_the_setting(
    argv: list[str], fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "run_server", lambda settings, **kw: seen.append(settings) or 0)

    assert cli.main(["serve", "--config", str(config), *argv]) == 0
    assert seen[0].server.log_format == fmt
