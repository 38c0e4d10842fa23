"""``llm-gateway serve`` with several worker processes on one port (gateway/workers.py), real processes.

Requests on separate connections are spread over the workers by the kernel (SO_REUSEPORT); any
worker's ``/metrics`` counts every request of every worker; a worker that dies takes the gateway down
with status 1; per-process rate limits are announced at start-up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_shutdown import free_port, serve_config, start_upstream

SERVERS = [pytest.param("uvicorn", id="uvicorn"), pytest.param("granian", id="granian")]


def start(
    tmp_path: Path,
    upstream_port: int,
    server: dict[str, Any],
    extra: dict[str, Any] | None = None,
    env_extra: dict[str, str] | None = None,
) -> Any:
    port = free_port()
    config = {
        "server": {"port": port, "log_level": "info", "drain_timeout_s": 2.0, **server},
        "backends": [
            {"name": "slow", "url": f"http://127.0.0.1:{upstream_port}", "served_model": "slow-served"},
        ],
        "arms": [{"name": "slow-plain", "model": "slow", "backends": ["slow"]}],
        **(extra or {}),
    }
    return serve_config(tmp_path, config, env_extra)


def worker_pids(supervisor: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(supervisor)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def requests_total(text: str) -> float:
    return sum(float(m) for m in re.findall(r'^gateway_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', text, re.M))


@pytest.mark.parametrize("http_server", SERVERS)
def test_metrics_of_every_worker_in_one_scrape(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], http_server: str
) -> None:
    if http_server == "granian":
        pytest.importorskip("granian")
    upstream, upstream_port = start_upstream(chunks=2, delay_s=0.0)
    processes.append(upstream)
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_1.db").write_bytes(b"stale")  # a previous run's file: removed at start
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom)}
    gateway, base = start(tmp_path, upstream_port, {"workers": 2, "http_server": http_server}, env_extra=env)
    processes.append(gateway)
    pids = worker_pids(gateway.pid)
    assert len(pids) == 2
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    n = 40
    for _ in range(n):  # one connection each: the kernel spreads them over the workers
        with httpx.Client() as client:
            assert client.post(base + "/v1/chat/completions", json=body, timeout=10).status_code == 200
    scrapes = []
    for _ in range(6):  # each scrape lands on either worker; every one of them counts all requests
        with httpx.Client() as client:
            scrapes.append(client.get(base + "/metrics", timeout=5).text)
    assert all(requests_total(t) == n for t in scrapes), [requests_total(t) for t in scrapes]
    assert all('gateway_inflight_requests{backend="slow"} 0.0' in t for t in scrapes)
    assert all('gateway_backend_up{backend="slow"} 1.0' in t for t in scrapes)
    # each worker keeps its values in its own file there; the stale one is gone
    assert {p.name for p in prom.glob("counter_*.db")} == {f"counter_{pid}.db" for pid in pids}
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(10) == 0


def test_a_dead_worker_stops_the_gateway(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    upstream, upstream_port = start_upstream(chunks=2, delay_s=0.0)
    processes.append(upstream)
    gateway, _ = start(tmp_path, upstream_port, {"workers": 2})
    processes.append(gateway)
    pids = worker_pids(gateway.pid)
    os.kill(pids[0], signal.SIGKILL)
    assert gateway.wait(15) == 1
    time.sleep(0.2)
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)
    assert gateway.stderr is not None
    assert "exited with signal 9: stopping the others" in gateway.stderr.read().decode(errors="replace")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_per_worker_rate_limits_are_announced(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    upstream, upstream_port = start_upstream(chunks=2, delay_s=0.0)
    processes.append(upstream)
    keys = {"auth": {"keys": [{"name": "team-a", "sha256": "a" * 64, "rpm": 60}]}}
    gateway, _ = start(tmp_path, upstream_port, {"workers": 2}, keys)
    processes.append(gateway)
    gateway.send_signal(signal.SIGTERM)
    gateway.wait(10)
    assert gateway.stderr is not None
    log = gateway.stderr.read().decode(errors="replace")
    assert "rate limits are per worker: keys team-a may get up to 2x their rpm/tpm" in log, log[-2000:]
