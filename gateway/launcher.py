"""Starting and stopping local vLLM-CPU servers: the local stack and the e2e tests use this.

Not part of the serving path (the app never imports it). A :class:`BackendSpec` file
(``deploy/local/backends.yaml``) lists the servers; :class:`Launcher` starts each in its own
process group with its log in a file, waits for ``/health`` while showing progress, and stops
them all (SIGTERM, then SIGKILL) on exit or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml


def home_dir() -> Path:
    """Where the backend environment and converted models live (``$LLM_GATEWAY_HOME``)."""
    return Path(os.environ.get("LLM_GATEWAY_HOME", Path.home() / ".cache" / "llm-gateway"))


@dataclass(frozen=True)
class ServerSpec:
    name: str
    port: int
    model: Path
    served_model: str
    cpu: int | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendSpec:
    python: Path
    servers: tuple[ServerSpec, ...]
    env: dict[str, str] = field(default_factory=dict)
    common_args: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path, home: Path | None = None) -> BackendSpec:
        home = home or home_dir()
        data: dict[str, Any] = yaml.safe_load(Path(path).read_text())
        servers = tuple(
            ServerSpec(
                name=s["name"],
                port=int(s["port"]),
                model=home / s["model"],
                served_model=s["served_model"],
                cpu=s.get("cpu"),
                args=tuple(s.get("args", ())),
            )
            for s in data["servers"]
        )
        return cls(
            python=home / data["python"],
            servers=servers,
            env={k: str(v) for k, v in data.get("env", {}).items()},
            common_args=tuple(data.get("common_args", ())),
        )

    def only(self, names: list[str]) -> BackendSpec:
        """The same spec with just the servers ``names`` (in file order); ``ValueError`` for an unknown name."""
        wanted = {n.strip() for n in names if n.strip()}
        unknown = wanted - {s.name for s in self.servers}
        if unknown or not wanted:
            known = ", ".join(s.name for s in self.servers)
            raise ValueError(f"unknown backend server(s) {sorted(unknown)}; known: {known}")
        return dataclasses.replace(self, servers=tuple(s for s in self.servers if s.name in wanted))


@dataclass
class Running:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"


class Launcher:
    """Owns the backend processes it starts. Use as a context manager."""

    def __init__(self, spec: BackendSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self.running: list[Running] = []

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, server: ServerSpec) -> list[str]:
        return [
            str(self.spec.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(server.model),
            "--served-model-name",
            server.served_model,
            "--host",
            "127.0.0.1",
            "--port",
            str(server.port),
            *self.spec.common_args,
            *server.args,
        ]

    def start(self) -> list[Running]:
        if not self.spec.python.exists():
            raise FileNotFoundError(
                f"backend environment missing: {self.spec.python} (run deploy/local/backend-env.sh)"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for server in self.spec.servers:
            if not (server.model / "config.json").exists():
                raise FileNotFoundError(f"model missing: {server.model} (run deploy/local/backend-env.sh)")
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **self.spec.env}
            if server.cpu is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = str(server.cpu)
            log = self.log_dir / f"{server.name}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    self.command(server), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            self.running.append(Running(server, proc, log))
        return self.running

    def wait_ready(self, timeout_s: float = 600.0, progress: bool = True) -> None:
        """Block until every server answers ``/health`` 200; raise with the log tail if one dies or times out."""
        pending = {r.spec.name: r for r in self.running}
        started = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while pending:
                elapsed = time.monotonic() - started
                for name, r in list(pending.items()):
                    if r.proc.poll() is not None:
                        raise RuntimeError(f"backend {name} exited with {r.proc.returncode}:\n{_tail(r.log)}")
                    try:
                        if client.get(r.url + "/health").status_code == 200:
                            del pending[name]
                            if progress:
                                print(
                                    f"\r  backend {name} ready on {r.url} after {elapsed:.0f} s" + " " * 20, flush=True
                                )
                    except httpx.HTTPError:
                        pass
                if not pending:
                    break
                if elapsed > timeout_s:
                    names = ", ".join(pending)
                    raise TimeoutError(
                        f"backends not ready after {timeout_s:.0f} s: {names}\n"
                        + "\n".join(_tail(r.log) for r in pending.values())
                    )
                if progress and sys.stdout.isatty():
                    print(f"\r  waiting for {', '.join(pending)} ... {elapsed:.0f} s", end="", flush=True)
                time.sleep(1.0)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process group, then SIGKILL what is left after ``grace_s``."""
        for r in self.running:
            if r.proc.poll() is None:
                _signal_group(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for r in self.running:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(r.proc, signal.SIGKILL)
                r.proc.wait()
        self.running.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
