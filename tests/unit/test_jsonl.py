"""One JSON-line encoder for every JSONL the gateway writes: U+2028/U+2029 never appear raw."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gateway.decision_log import DecisionLog
from gateway.jsonl import encode_line
from gateway.logs import JsonFormatter

TEXT = "a\u2028b\u2029c \u00e9\u2027"
RAW = ("\u2028".encode(), "\u2029".encode())


def _clean(data: bytes) -> None:
    assert not any(sep in data for sep in RAW)


def test_encode_line_escapes_the_line_separators_and_nothing_else() -> None:
    data = encode_line({"t": TEXT})
    _clean(data)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {"t": TEXT}
    assert "\u00e9\u2027".encode() in data  # other characters stay raw UTF-8
    assert encode_line({"n": 1}) == b'{"n":1}\n'


def test_the_decision_log_and_json_log_records_use_it(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    assert log.write({"prompt": TEXT})
    raw = (tmp_path / "d.jsonl").read_bytes()
    _clean(raw)
    assert json.loads(raw)["prompt"] == TEXT
    record = logging.LogRecord("gateway.app", logging.INFO, __file__, 1, TEXT, None, None)
    line = JsonFormatter().format(record)
    _clean(line.encode())
    assert "\n" not in line and json.loads(line)["message"] == TEXT
