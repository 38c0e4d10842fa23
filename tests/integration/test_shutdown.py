"""SIGTERM with real processes: ``llm-gateway serve`` in front of a slow upstream, under uvicorn, under
granian, and as two worker processes on one port (each test runs in the three set-ups).

The gateway stops accepting connections at once, lets an open stream finish within
``server.drain_timeout_s`` and exits; a stream longer than the drain timeout is ended with an
SSE error event and ``[DONE]``, and the process still exits on time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s")


def start_upstream(chunks: int, delay_s: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, str(HERE / "slow_upstream.py"), str(port), str(chunks), str(delay_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


SETUPS = [
    pytest.param({"http_server": "uvicorn", "workers": 1}, id="uvicorn"),
    pytest.param({"http_server": "granian", "workers": 1}, id="granian"),
    pytest.param({"http_server": "uvicorn", "workers": 2}, id="uvicorn-2-workers"),
    pytest.param({"http_server": "granian", "workers": 2}, id="granian-2-workers"),
]


@pytest.fixture(params=SETUPS)
def setup(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param["http_server"] == "granian":
        pytest.importorskip("granian")
    return dict(request.param)


def start_gateway(
    tmp_path: Path, upstream_port: int, drain_timeout_s: float, setup: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {
        "server": {"port": port, "drain_timeout_s": drain_timeout_s, "log_level": "warning", **setup},
        "backends": [
            {
                "name": "slow",
                "url": f"http://127.0.0.1:{upstream_port}",
                "served_model": "slow-served",
                "scrape_metrics": False,
            }
        ],
        "arms": [{"name": "slow-plain", "model": "slow", "backends": ["slow"]}],
    }
    return serve_config(tmp_path, config)


def serve_config(
    tmp_path: Path, config: dict[str, Any], env_extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m gateway serve`` on ``config`` (written to ``tmp_path/gateway.yaml``; it must name
    ``server.port``), without the caller's ``GATEWAY_*`` and ``PROMETHEUS_*`` variables, plus
    ``env_extra``. Returns (process, base URL) once it is ready, every worker of several."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{config['server']['port']}"
    wait_healthy(base + "/ready", proc)
    if config["server"].get("workers", 1) > 1:
        wait_all_ready(base + "/ready", proc)
    return proc, base


def wait_all_ready(url: str, proc: subprocess.Popen[bytes], in_a_row: int = 8) -> None:
    """/ready is each worker's own: wait until ``in_a_row`` answers on fresh connections (spread over the
    workers by the kernel) are all 200, so that no worker is still finding its backend healthy."""
    ok, deadline = 0, time.monotonic() + 30.0
    while ok < in_a_row and time.monotonic() < deadline:
        ok = ok + 1 if httpx.get(url, timeout=2.0).status_code == 200 else 0
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
    assert ok >= in_a_row, f"{url}: not every worker ready after 30 s"


def stream_across_sigterm(base: str, gateway: subprocess.Popen[bytes]) -> tuple[list[str], float]:
    """Open a stream, SIGTERM the gateway after the first chunk, read to the end; (data lines, SIGTERM time)."""
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    lines: list[str] = []
    sent_at = 0.0
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30.0) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            if len(lines) == 1:
                gateway.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                time.sleep(0.3)
                with pytest.raises(httpx.ConnectError):  # no new connections while draining
                    httpx.get(base + "/health", timeout=2.0)
    return lines, sent_at


def test_sigterm_lets_an_open_stream_finish_then_exits(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], setup: dict[str, Any]
) -> None:
    upstream, upstream_port = start_upstream(chunks=12, delay_s=0.2)
    processes.append(upstream)
    gateway, base = start_gateway(tmp_path, upstream_port, 10.0, setup)
    processes.append(gateway)

    lines, sent_at = stream_across_sigterm(base, gateway)
    stream_end = time.monotonic()
    gateway.wait(timeout=10.0)
    exited = time.monotonic()

    assert lines[-1] == "data: [DONE]"
    content = [json.loads(x[6:])["choices"][0]["delta"].get("content") for x in lines[:-1]]
    assert content == [f"t{i} " for i in range(12)]
    assert stream_end - sent_at > 1.5  # the stream went on for seconds after SIGTERM
    assert exited - sent_at < 10.0
    assert gateway.returncode in (0, -signal.SIGTERM)


def test_a_stream_longer_than_the_drain_timeout_is_ended_visibly(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], setup: dict[str, Any]
) -> None:
    upstream, upstream_port = start_upstream(chunks=100, delay_s=0.1)
    processes.append(upstream)
    gateway, base = start_gateway(tmp_path, upstream_port, 1.0, setup)
    processes.append(gateway)

    lines, sent_at = stream_across_sigterm(base, gateway)
    gateway.wait(timeout=10.0)
    exited = time.monotonic()

    assert exited - sent_at < 1.0 + 3.0  # drain timeout + shutdown
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "shutting_down"), error
    assert len(lines) < 60  # cut well before the upstream's 100 chunks
    assert gateway.stderr is not None
    log = gateway.stderr.read().decode(errors="replace")
    # issue 18 #9: the relay task outlived the cut and wrote after the response had completed
    assert "Unexpected ASGI message" not in log and "Traceback" not in log, log[-3000:]
