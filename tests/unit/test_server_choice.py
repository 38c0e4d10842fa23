"""The HTTP server choice and worker processes: settings, command line, the SO_REUSEPORT socket, the
granian drain (gateway/server_granian.py InFlight), and the worker supervisor's bookkeeping."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import cli, server, workers
from gateway.server_granian import InFlight
from gateway.settings import Settings, SettingsError, load_settings

CONFIG: dict[str, Any] = {
    "backends": [{"name": "b", "url": "http://127.0.0.1:9", "served_model": "m"}],
    "arms": [{"name": "a", "model": "m", "backends": ["b"]}],
}


def write(tmp_path: Path, server_settings: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "server": server_settings or {}}))
    return path


def test_uvicorn_and_one_worker_by_default(tmp_path: Path) -> None:
    s = load_settings(str(write(tmp_path)))
    assert (s.server.http_server, s.server.workers) == ("uvicorn", 1)


@pytest.mark.parametrize(("key", "value"), [("http_server", "nginx"), ("workers", 0), ("workers", 1000)])
def test_bad_server_settings_name_the_key(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"server.{key}"):
        load_settings(str(write(tmp_path, {key: value})))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], ("uvicorn", 1)), (["--server", "granian"], ("granian", 1)), (["--workers", "4"], ("uvicorn", 4))],
)
def test_serve_options_override_the_settings(
    argv: list[str], expected: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "run_server", lambda settings, **kw: seen.append(settings) or 0)
    assert cli.main(["serve", "--config", str(write(tmp_path)), *argv]) == 0
    assert (seen[0].server.http_server, seen[0].server.workers) == expected


@pytest.mark.parametrize("value", ["0", "x", "257"])
def test_bad_workers_option_is_named(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--config", str(write(tmp_path)), "--workers", value])
    assert "--workers: expected a whole number from 1 to 256" in capsys.readouterr().err


def test_unknown_server_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="http_server: unknown server 'nginx'"):
        server.serve(None, 1.0, host="127.0.0.1", port=1, http_server="nginx")  # type: ignore[arg-type]


def test_granian_missing_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setitem(sys.modules, "granian", None)  # find_spec raises ValueError for a None entry
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "granian" else object())
    settings = load_settings(str(write(tmp_path, {"http_server": "granian"})))
    assert cli.run_server(settings) == 2
    assert "granian is not installed: pip install 'llm-gateway[granian]'" in capsys.readouterr().err


def test_two_reuse_port_sockets_share_a_port() -> None:
    first = server.listening_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = server.listening_socket("127.0.0.1", port)
    try:
        assert second.getsockname()[1] == port
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        first.close()
        second.close()


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(scope["sleep"])


async def _start(inflight: InFlight, *sleeps: float) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(inflight({"type": "http", "sleep": s}, None, None)) for s in sleeps]
    await asyncio.sleep(0)
    return tasks


async def test_the_drain_waits_for_requests_that_finish_in_time() -> None:
    inflight = InFlight(_app)
    tasks = await _start(inflight, 0.05, 0.1)
    assert len(inflight.tasks) == 2
    assert await inflight.drain(5.0, asyncio.Event()) == 0
    assert all(t.done() and not t.cancelled() for t in tasks) and not inflight.tasks


async def test_the_drain_cancels_what_is_left_at_the_timeout() -> None:
    inflight = InFlight(_app)
    quick, slow = await _start(inflight, 0.01, 30.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await inflight.drain(0.2, asyncio.Event()) == 1
    assert loop.time() - t0 < 2.0
    assert quick.done() and not quick.cancelled() and slow.cancelled()


async def test_the_drain_timeout_counts_from_the_start_not_from_each_finished_request() -> None:
    inflight = InFlight(_app)
    finished, slow = await _start(inflight, 0.8, 30.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await inflight.drain(1.0, asyncio.Event()) == 1
    assert loop.time() - t0 < 1.5  # a fresh 1 s wait after the 0.8 s request ended would take 1.8 s
    assert finished.done() and not finished.cancelled() and slow.cancelled()


async def test_a_second_signal_cuts_the_drain_short() -> None:
    inflight = InFlight(_app)
    (slow,) = await _start(inflight, 30.0)
    hurry = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, hurry.set)
    assert await inflight.drain(30.0, hurry) == 1
    assert slow.cancelled()


def test_per_process_notes_name_the_limited_keys(tmp_path: Path) -> None:
    keys = {"keys": [{"name": "a", "sha256": "a" * 64, "rpm": 5}, {"name": "b", "sha256": "b" * 64}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "auth": keys}))
    notes = workers.per_process_notes(load_settings(str(path)), 3)
    assert notes[0].startswith("rate limits are per worker: keys a may get up to 3x")
    assert "feedback memory" in notes[-1]


def test_a_given_metrics_folder_is_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert workers.prepare_metrics_dir() == (tmp_path, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_worker_that_exits_on_its_own_fails_the_gateway() -> None:
    assert workers.supervise(2, lambda index: 0) == 1


def test_workers_stopped_by_a_signal_are_a_clean_exit() -> None:
    parent = os.getpid()

    def worker(index: int) -> int:
        if index == 1:
            os.kill(parent, 15)  # the supervisor passes it on to both
        import time

        time.sleep(30)
        return 0

    assert workers.supervise(2, worker) == 0
