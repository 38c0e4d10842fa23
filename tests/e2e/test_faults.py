"""Faults with real processes: a vLLM-CPU backend killed with SIGKILL mid-stream, and every backend down.

This module owns its processes (it kills them, so it cannot share the session's backends): one
real vLLM-CPU server (SmolLM2-135M, the ``smol-plain`` entry of ``deploy/local/backends.yaml`` on
a free port; about 40 s to start, about 3 GB), one fast fake upstream
(``loadtests/fake_upstream.py``, a separate process) as the second backend of the same arm, and
the gateway under uvicorn in its own process with health checks every 0.5 s.

Deployment: arm ``smollm2-plain`` (model ``smollm2-135m``) = backends ``vllm`` then ``fake``. Both
idle, ties go to the first listed, so a request goes to the real vLLM server unless it is down.
Assertions read the ``x-route-backend`` header, ``/ready`` and ``/metrics``, never the log.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import LOCAL, ROOT, free_port, stop, wait_http

from lab.launcher import BackendSpec, Launcher

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"


@dataclasses.dataclass
class Stack:
    gateway: str
    vllm_url: str
    fake_url: str
    fake_port: int
    logs: Path
    launcher: Launcher
    fake: subprocess.Popen[bytes] | None = None

    def start_fake(self) -> None:
        with (self.logs / "fake.log").open("ab") as log:
            self.fake = subprocess.Popen(
                [
                    *(sys.executable, str(ROOT / "loadtests" / "fake_upstream.py"), "--port", str(self.fake_port)),
                    *("--model", "smollm2", "--ttft-ms", "20", "--itl-ms", "20", "--tokens", "16"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(self.fake_url + "/health", 20, self.fake)

    def kill_fake(self) -> None:
        assert self.fake is not None
        os.killpg(self.fake.pid, signal.SIGKILL)
        self.fake.wait()

    def start_vllm(self) -> None:
        self.launcher.start()
        self.launcher.wait_ready(timeout_s=300, progress=False)

    def kill_vllm(self) -> None:
        """SIGKILL the whole vLLM process group (API server and engine core), as a crash would."""
        for r in self.launcher.running:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
        self.launcher.running.clear()

    def ready(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(self.gateway + "/ready", timeout=5)
        return r.status_code, r.json()

    def backend_up(self, name: str) -> float | None:
        text = httpx.get(self.gateway + "/metrics", timeout=5).text
        m = re.search(rf'^gateway_backend_up\{{backend="{name}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else None

    def wait_for(self, what: str, pred: Any, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {what}; /ready = {self.ready()}")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway + "/v1", api_key="unused", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("faults")
    spec = BackendSpec.load(LOCAL / "backends.yaml").only(["smol-plain"])
    spec = dataclasses.replace(spec, servers=(dataclasses.replace(spec.servers[0], port=free_port()),))
    fake_port = free_port()
    port = free_port()
    with Launcher(spec, logs / "vllm") as launcher:
        s = Stack(
            gateway=f"http://127.0.0.1:{port}",
            vllm_url=f"http://127.0.0.1:{spec.servers[0].port}",
            fake_url=f"http://127.0.0.1:{fake_port}",
            fake_port=fake_port,
            logs=logs,
            launcher=launcher,
        )
        s.start_vllm()
        s.start_fake()
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "backends": [
                {"name": "vllm", "url": s.vllm_url, "served_model": "smollm2"},
                {"name": "fake", "url": s.fake_url, "served_model": "smollm2"},
            ],
            "arms": [{"name": "smollm2-plain", "model": MODEL, "backends": ["vllm", "fake"]}],
            "health": {"interval_s": 0.5, "timeout_s": 1.0, "unhealthy_after": 2},
            "timeouts": {"retry_after_s": 2},
            # the mid-stream kill below checks the error path; resuming on the fake is off here
            "streaming": {"max_resumes": 0},
        }
        (logs / "gateway.yaml").write_text(yaml.safe_dump(config))
        log = logs / "gateway.log"
        with log.open("wb") as fh:
            gw = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(logs / "gateway.yaml")],
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        try:
            wait_http(s.gateway + "/ready", 60, gw, log)
            s.wait_for("both backends healthy", lambda: all(b["healthy"] for b in s.ready()[1]["backends"].values()))
            yield s
        finally:
            stop(gw)
            if s.fake is not None and s.fake.poll() is None:
                stop(s.fake)


def test_sigkill_mid_stream_gives_an_error_event_then_fails_over_and_recovers(stack: Stack) -> None:
    client = stack.client()
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    ) as raw:
        assert raw.headers["x-route-backend"] == "vllm", "idle tie goes to the first backend"
        chunks = 0
        killed_at: float | None = None
        with pytest.raises(openai.APIError) as caught:
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks += 1
                if chunks == 5 and killed_at is None:
                    stack.kill_vllm()
                    killed_at = time.monotonic()
        assert killed_at is not None, "tokens arrived before the kill"
        after_kill = time.monotonic() - killed_at
    assert "incomplete" in str(caught.value), caught.value
    assert after_kill < 10, f"the error came {after_kill:.1f} s after the kill: no hang"
    print(f"\nerror event {after_kill * 1000:.0f} ms after SIGKILL: {caught.value}")

    # requests that had not started yet go to the other backend of the arm
    for stream in (False, True):
        r = httpx.post(
            stack.gateway + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": stream},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-route-backend"] == "fake"
        assert r.text.rstrip().endswith("[DONE]") if stream else r.json()["choices"]

    # marked down: /ready lists it unhealthy (the gateway stays ready on the fake), the gauge is 0
    stack.wait_for("vllm marked down", lambda: stack.ready()[1]["backends"]["vllm"]["healthy"] is False)
    status, doc = stack.ready()
    assert status == 200 and doc["ready"] is True and doc["backends"]["fake"]["healthy"] is True
    assert stack.backend_up("vllm") == 0.0
    assert stack.backend_up("fake") == 1.0

    # restarted, it comes back by itself and takes requests again
    stack.start_vllm()
    t0 = time.monotonic()
    stack.wait_for("vllm back up", lambda: stack.ready()[1]["backends"]["vllm"]["healthy"] is True)
    print(f"vllm healthy in the gateway {time.monotonic() - t0:.1f} s after its /health passed")
    assert stack.backend_up("vllm") == 1.0
    got = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert got.headers["x-route-backend"] == "vllm"
    assert got.parse().choices[0].message.content is not None


def test_all_backends_down_is_503_with_retry_after_then_recovers_by_itself(stack: Stack) -> None:
    stack.kill_vllm()
    stack.kill_fake()
    t0 = time.monotonic()
    stack.wait_for("every backend down", lambda: stack.ready()[0] == 503)
    print(f"\n/ready 503 {time.monotonic() - t0:.1f} s after the last backend died")
    _, doc = stack.ready()
    assert doc["ready"] is False and not any(b["healthy"] for b in doc["backends"].values())
    assert httpx.get(stack.gateway + "/ready", timeout=5).headers["retry-after"] == "2"

    client = stack.client()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.body["code"] == "no_healthy_backend"  # type: ignore[index]

    # a stream asked for while everything is down is a plain 503 too (no half-open SSE)
    r = httpx.post(
        stack.gateway + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        timeout=10,
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "2"

    # one backend returns: the gateway notices on its own (no restart, no request needed)
    stack.start_fake()
    t0 = time.monotonic()
    stack.wait_for("ready again", lambda: stack.ready()[0] == 200)
    print(f"/ready 200 again {time.monotonic() - t0:.1f} s after a backend came back")
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert out.choices[0].message.content
