"""``llm-gateway local-stack`` stopped by a signal leaves nothing running: real processes, fake servers.

The launcher is the real command (``python -m gateway local-stack``) in its own session; its two
"vLLM" servers are :mod:`fake_stack_server` (installed as a fake ``vllm`` package on ``PYTHONPATH``),
each with a grandchild holding its port as vLLM's engine core does. The test signals the launcher
while it waits for the servers and while the gateway serves, then checks that every server and
grandchild is gone and every port is free. SIGKILL cannot be handled: the launcher's watchdog ends
the servers; without it too, the servers get SIGTERM from the kernel (parent-death signal) and the
next start ends the grandchildren left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from lab.launcher import BackendSpec, Launcher

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SERVERS = ("fake-a", "fake-b")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc: Linux")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(what: str, pred: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")


@dataclass
class Stack:
    """Files of one fake local stack under ``tmp``, and the processes of its runs."""

    tmp: Path
    ports: dict[str, int]
    gateway_port: int
    launchers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # every server and grandchild of every run, for the clean-up
    watchdog: int = 0  # the latest run's

    @property
    def pids_dir(self) -> Path:
        return self.tmp / "pids"

    @property
    def log_dir(self) -> Path:
        return self.tmp / "logs"

    def write(self, healthy: bool) -> None:
        """The backend file (fake servers), the gateway config in front of them, the fake ``vllm`` package."""
        module = self.tmp / "fake" / "vllm" / "entrypoints" / "openai" / "api_server.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "fake_stack_server.py", module)
        (self.tmp / "model").mkdir(exist_ok=True)
        (self.tmp / "model" / "config.json").write_text("{}")
        self.pids_dir.mkdir(exist_ok=True)
        env = {"PYTHONPATH": str(self.tmp / "fake"), "FAKE_PIDS": str(self.pids_dir)}
        backends = {
            "python": sys.executable,
            "env": {**env, "FAKE_HEALTHY": "1" if healthy else "0"},
            "servers": [
                {"name": name, "port": port, "model": str(self.tmp / "model"), "served_model": "fake-served"}
                for name, port in self.ports.items()
            ],
        }
        (self.tmp / "backends.yaml").write_text(yaml.safe_dump(backends))
        gateway = {
            "server": {"host": "127.0.0.1", "port": self.gateway_port, "drain_timeout_s": 1.0, "log_level": "warning"},
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{p}", "served_model": "fake-served", "scrape_metrics": False}
                for n, p in self.ports.items()
            ],
            "arms": [{"name": "fake-plain", "model": "fake", "backends": list(self.ports)}],
            "health": {"interval_s": 0.2},
        }
        (self.tmp / "gateway.yaml").write_text(yaml.safe_dump(gateway))

    def launch(self, healthy: bool = True) -> subprocess.Popen[bytes]:
        """``llm-gateway local-stack`` on the fake stack, in a session of its own (as a service manager runs it)."""
        self.write(healthy)
        self.seen.update(self.processes())
        for f in self.pids_dir.glob("*.json"):
            f.unlink()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        cmd = [sys.executable, "-m", "gateway", "local-stack", "--config", str(self.tmp / "gateway.yaml")]
        cmd += ["--backends", str(self.tmp / "backends.yaml"), "--log-dir", str(self.log_dir)]
        with (self.tmp / "launcher.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # the default SIGHUP action even when the tests run under nohup (an ignored one stays ignored)
                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
            )
        self.launchers.append(proc)
        wait_until("both fake servers up", lambda: len(self.pids()) == len(SERVERS) or proc.poll() is not None)
        assert proc.poll() is None, self.log()
        self.watchdog = self.record()["watchdog"]
        self.seen.add(self.watchdog)
        return proc

    def pids(self) -> dict[int, dict[str, int]]:
        """port -> {"server": pid, "grandchild": pid} of the servers of the latest run."""
        return {int(f.stem): json.loads(f.read_text()) for f in self.pids_dir.glob("*.json")}

    def processes(self) -> list[int]:
        return [pid for p in self.pids().values() for pid in p.values()]

    def record(self) -> dict[str, Any]:
        """The running launcher's ``launcher-*.json`` (its watchdog's pid, its servers' process groups)."""
        (path,) = self.log_dir.glob("launcher-*.json")
        return cast(dict[str, Any], json.loads(path.read_text()))

    def gateway_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.gateway_port}/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return (self.tmp / "launcher.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, {name: free_port() for name in SERVERS}, free_port())
    try:
        yield s
    finally:  # whatever a failed test left: launchers, then every server and grandchild any run recorded
        for proc in s.launchers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in s.seen | set(s.processes()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def assert_all_stopped(stack: Stack, launcher: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    launcher.wait(timeout=20)
    assert launcher.returncode == 128 + signum, stack.log()
    assert f"==> stopped ({signum.name})" in stack.log()
    left = [pid for pid in [*stack.processes(), stack.watchdog] if running(pid)]
    assert not left, f"still running: {left}\n{stack.log()}"
    for port in [*stack.ports.values(), stack.gateway_port]:
        assert port_free(port), port
    assert not list(stack.log_dir.glob("launcher-*.json"))  # its record goes with a clean stop


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_serving_stops_the_gateway_and_every_server(stack: Stack, signum: signal.Signals) -> None:
    launcher = stack.launch()
    wait_until("the gateway ready", stack.gateway_ready, timeout_s=30)
    launcher.send_signal(signum)
    assert_all_stopped(stack, launcher, signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_waiting_for_the_servers_stops_them(stack: Stack, signum: signal.Signals) -> None:
    launcher = stack.launch(healthy=False)
    time.sleep(0.3)  # in wait_ready's polling loop
    launcher.send_signal(signum)
    assert_all_stopped(stack, launcher, signum)


def test_after_sigkill_the_watchdog_ends_every_server(stack: Stack) -> None:
    launcher = stack.launch(healthy=False)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's own group only: the servers each have a session
    launcher.wait(10)
    wait_until("every server and grandchild ended", lambda: not any(running(pid) for pid in stack.processes()))
    wait_until("the watchdog exited", lambda: not running(stack.watchdog))
    assert all(port_free(port) for port in stack.ports.values())
    assert "the launcher is gone: ending process groups" in (stack.log_dir / "watchdog.log").read_text()


def test_with_the_watchdog_killed_too_servers_get_sigterm_and_the_next_start_ends_the_rest(stack: Stack) -> None:
    first = stack.launch(healthy=False)
    left = stack.pids()
    os.kill(stack.watchdog, signal.SIGKILL)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    # parent-death signal: each server got SIGTERM from the kernel. The fake, unlike a serving vLLM, does not stop
    # its grandchild on SIGTERM, so the grandchildren still hold the ports...
    wait_until("the servers ended", lambda: not any(running(p["server"]) for p in left.values()))
    assert all(running(p["grandchild"]) for p in left.values())
    assert not any(port_free(port) for port in stack.ports.values())
    # ...until the next start on the same log directory ends them first: its servers get the same ports.
    second = stack.launch()
    assert not any(running(p["grandchild"]) for p in left.values())
    wait_until("the gateway ready", stack.gateway_ready, timeout_s=30)
    assert "had left running: fake-a, fake-b" in stack.log()
    second.send_signal(signal.SIGTERM)
    assert_all_stopped(stack, second, signal.SIGTERM)


def in_process_launcher(stack: Stack, **env: str) -> Launcher:
    """A :class:`Launcher` in this process on the fake stack's servers, ``env`` added to theirs."""
    stack.write(healthy=True)
    spec = BackendSpec.load(stack.tmp / "backends.yaml")
    return Launcher(dataclasses.replace(spec, env={**spec.env, **env}), stack.log_dir)


def test_stop_kills_what_ignores_sigterm_after_the_grace_period(stack: Stack) -> None:
    launcher = in_process_launcher(stack, FAKE_IGNORE_TERM="1")
    launcher.start()
    wait_until("both fake servers up", lambda: len(stack.pids()) == len(SERVERS))
    started = time.monotonic()
    launcher.stop(grace_s=0.5)
    assert 0.5 <= time.monotonic() - started < 3.0
    assert not any(running(pid) for pid in stack.processes())
    assert all(port_free(port) for port in stack.ports.values())


def test_a_live_launchers_servers_are_not_taken_for_stale(stack: Stack) -> None:
    with in_process_launcher(stack) as first:
        first.start()
        wait_until("both fake servers up", lambda: len(stack.pids()) == len(SERVERS))
        assert Launcher(first.spec, stack.log_dir).reap_stale(grace_s=0.5) == []
        assert all(running(pid) for pid in stack.processes())
    assert not any(running(pid) for pid in stack.processes())
