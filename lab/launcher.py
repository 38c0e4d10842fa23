"""Starting and stopping local vLLM-CPU servers (and llama.cpp ones): the local stack and the e2e tests use this.

Not part of the serving path (the app never imports it). A :class:`BackendSpec` file
(``deploy/local/backends.yaml``) lists the servers; :class:`Launcher` starts each in its own
process group with its log in a file, waits for ``/health`` while showing progress, and stops
every process of every group (SIGTERM, then SIGKILL after a grace period) on exit.

A server is vLLM unless it says ``engine: llamacpp``: then it is llama.cpp's OpenAI-compatible server
(``python -m llama_cpp.server``, from ``deploy/local/llamacpp-env.sh``) with its own ``python``, a GGUF
file as ``model``, and readiness read on ``/v1/models`` (it has no ``/health``); the file's
``common_args`` are vLLM flags and go to vLLM servers only.

No server outlives the launcher however it ends:

- Ctrl-C raises ``KeyboardInterrupt``, and inside :func:`raise_on_stop_signals` SIGTERM and
  SIGHUP raise :class:`Stopped`: either unwinds through ``Launcher.__exit__``, which stops them;
- if the launcher dies without stopping them (SIGKILL, OOM killer), its watchdog, a small process in
  a session of its own reading the servers' process groups from a pipe, sees the pipe close and ends
  every group as :meth:`Launcher.stop` would (:func:`lab.processes.watch`);
- on Linux each server also gets SIGTERM from the kernel when the launcher dies (``PR_SET_PDEATHSIG``):
  a serving vLLM then stops its engine core (a vLLM still loading may not: the watchdog's SIGKILL does);
- each launcher records its servers' process groups in ``launcher-*.json`` in its log directory,
  locked while it lives; the next start on that directory ends whatever a dead launcher left
  running (:meth:`Launcher.reap_stale`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from lab import processes
from lab.processes import Stopped, raise_on_stop_signals
from lab.progress import progress as _progress

__all__ = ["BackendSpec", "Launcher", "Running", "ServerSpec", "Stopped", "home_dir", "raise_on_stop_signals"]


def home_dir() -> Path:
    """Where the backend environment and converted models live (``$LLM_GATEWAY_HOME``)."""
    return Path(os.environ.get("LLM_GATEWAY_HOME", Path.home() / ".cache" / "llm-gateway"))


ENGINES = ("vllm", "llamacpp")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    port: int
    model: Path
    served_model: str
    cpu: int | None = None
    args: tuple[str, ...] = ()
    engine: str = "vllm"
    python: Path | None = None  # this server's interpreter, if not the file's

    @property
    def health_path(self) -> str:
        """Where readiness is read (200: ready); the gateway's ``backends[].health_path`` for it."""
        return "/v1/models" if self.engine == "llamacpp" else "/health"

    def model_missing(self) -> bool:
        """A vLLM model is a directory with ``config.json``; a llama.cpp one a GGUF file."""
        return not (self.model.is_file() if self.engine == "llamacpp" else (self.model / "config.json").exists())


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
                engine=s.get("engine", "vllm"),
                python=home / s["python"] if s.get("python") else None,
            )
            for s in data["servers"]
        )
        unknown = sorted({s.engine for s in servers} - set(ENGINES))
        if unknown:
            raise ValueError(f"{path}: unknown engine(s) {unknown}; known: {', '.join(ENGINES)}")
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
        self._record: IO[str] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self._record_path = log_dir / f"launcher-{os.getpid()}-{id(self):x}.json"  # one per launcher object

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def python(self, server: ServerSpec) -> Path:
        return server.python or self.spec.python

    def command(self, server: ServerSpec) -> list[str]:
        if server.engine == "llamacpp":
            return [
                str(self.python(server)),
                "-m",
                "llama_cpp.server",
                "--model",
                str(server.model),
                "--model_alias",
                server.served_model,
                "--host",
                "127.0.0.1",
                "--port",
                str(server.port),
                # by default a new request interrupts the stream in progress
                "--interrupt_requests",
                "False",
                *server.args,
            ]
        return [
            str(self.python(server)),
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
        """Start every server in a process group of its own, after ending what a dead launcher left running.

        Stop signals that arrive while the servers are being started take effect once all are recorded,
        so none is left started but untracked.
        """
        for server in self.spec.servers:
            script = "llamacpp-env.sh" if server.engine == "llamacpp" else "backend-env.sh"
            if not self.python(server).exists():
                raise FileNotFoundError(
                    f"backend environment missing: {self.python(server)} (run deploy/local/{script})"
                )
            if server.model_missing():
                raise FileNotFoundError(f"model missing: {server.model} (run deploy/local/{script})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ended = self.reap_stale()
        if ended:
            print(f"==> ended servers a launcher that died had left running: {', '.join(ended)}", file=sys.stderr)
        with processes.held_signals():
            self._start_watchdog()
            for server in self.spec.servers:
                self.running.append(self._spawn(server))
                self._tell_watchdog(str(self.running[-1].proc.pid))
                self._write_record()
        return self.running

    def _start_watchdog(self) -> None:
        """Start the watchdog (:func:`watch`) unless running; it gets the process groups on its stdin."""
        if self.watchdog is not None and self.watchdog.poll() is None:
            return
        package_root = str(Path(__file__).resolve().parents[1])  # the watchdog imports lab as this process does
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        with (self.log_dir / "watchdog.log").open("ab") as log:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "lab.processes"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": path},
                start_new_session=True,  # neither Ctrl-C nor a hang-up meant for the launcher reaches it
            )

    def _tell_watchdog(self, line: str) -> None:
        if self.watchdog is not None and self.watchdog.stdin is not None:
            with contextlib.suppress(OSError):  # a watchdog that died is no reason not to serve
                self.watchdog.stdin.write(line.encode() + b"\n")
                self.watchdog.stdin.flush()

    def _stop_watchdog(self) -> None:
        """Tell the watchdog every group is stopped, so it ends nothing, and let it exit."""
        if self.watchdog is None:
            return
        self._tell_watchdog("clear")
        if self.watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                self.watchdog.stdin.close()
        try:
            self.watchdog.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
            self.watchdog.wait()
        self.watchdog = None

    def _spawn(self, server: ServerSpec) -> Running:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **self.spec.env}
        if server.cpu is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(server.cpu)
        log = self.log_dir / f"{server.name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                self.command(server),
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=processes.die_with_parent(),
            )
        return Running(server, proc, log)

    def _write_record(self) -> None:
        """Write ``launcher-PID-ID.json`` (the servers' process groups), created locked: a live launcher's record
        is never taken for a stale one. The lock goes with this process, however it ends."""
        if self._record is None:
            fh = self._record_path.with_name(f".{self._record_path.name}.new").open("w")
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write("{}")
            fh.flush()
            os.replace(fh.name, self._record_path)  # the lock is on the file, not the name: it keeps it
            self._record = fh
        servers = [
            {"name": r.spec.name, "pgid": r.proc.pid, "port": r.spec.port, "started": processes.start_time(r.proc.pid)}
            for r in self.running
        ]
        self._record.seek(0)
        self._record.truncate()
        watchdog = self.watchdog.pid if self.watchdog else None
        json.dump({"launcher": os.getpid(), "watchdog": watchdog, "servers": servers}, self._record)
        self._record.flush()

    def _drop_record(self) -> None:
        if self._record is not None:
            self._record_path.unlink(missing_ok=True)
            self._record.close()
            self._record = None

    def reap_stale(self, grace_s: float = 15.0) -> list[str]:
        """End the servers of launchers on this log directory that died without stopping them; their names.

        A record is stale when no process holds its lock. A group is ended only if it still is the one
        recorded (same session, and a surviving leader started when recorded), so a reused process id is
        never signalled. Linux only (it reads ``/proc``); elsewhere nothing is done.
        """
        if not processes.PROC.is_dir() or not self.log_dir.is_dir():
            return []
        ended: list[str] = []
        for path in sorted(self.log_dir.glob("launcher-*.json")):
            with path.open() as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its launcher is alive
                servers = _parse_record(fh.read())
                stale = [s for s in servers if processes.is_recorded_group(int(s["pgid"]), s.get("started"))]
                processes.end_groups([int(s["pgid"]) for s in stale], grace_s)
                ended += [str(s.get("name")) for s in stale]
                path.unlink(missing_ok=True)
        return ended

    def wait_ready(self, timeout_s: float = 600.0, progress: bool = True) -> None:
        """Block until every server answers ``/health`` 200; raise with the log tail if one dies or times out.

        ``progress``: a bar on stderr (servers ready, elapsed time, the ones still loading) and a line per
        server when it is ready."""
        pending = {r.spec.name: r for r in self.running}
        started = time.monotonic()
        bar = _progress(len(pending), "starting vLLM servers", "server", disable=not progress)
        with bar, httpx.Client(timeout=2.0) as client:
            while pending:
                elapsed = time.monotonic() - started
                for name, r in list(pending.items()):
                    if r.proc.poll() is not None:
                        raise RuntimeError(f"backend {name} exited with {r.proc.returncode}:\n{_tail(r.log)}")
                    try:
                        if client.get(r.url + r.spec.health_path).status_code == 200:
                            del pending[name]
                            if progress:
                                bar.write(f"  backend {name} ready on {r.url} after {elapsed:.0f} s", file=sys.stderr)
                            bar.update(1)
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
                bar.set_postfix_str(f"loading: {', '.join(pending)}", refresh=False)
                bar.update(0)  # redraws the elapsed time (in a log: a line every 30 s)
                time.sleep(1.0)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every server's process group, wait up to ``grace_s`` for all their processes (vLLM's engine
        core included) to end, then SIGKILL what is left. A stop signal arriving meanwhile (a second Ctrl-C)
        cuts the wait short; it is raised again once everything is stopped."""
        with processes.held_signals() as caught:
            processes.end_groups([r.proc.pid for r in self.running], grace_s, hurry=caught, reap=self._reap)
            for r in self.running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r.proc.wait(timeout=5.0)
            self.running.clear()
            self._stop_watchdog()
            self._drop_record()

    def _reap(self) -> None:
        for r in self.running:
            r.proc.poll()


def _parse_record(text: str) -> list[dict[str, Any]]:
    """The servers of a ``launcher-*.json``; none for an unreadable one (its launcher died writing it)."""
    try:
        servers = json.loads(text).get("servers", [])
    except (ValueError, AttributeError):
        return []
    if not isinstance(servers, list):
        return []
    return [s for s in servers if isinstance(s, dict) and isinstance(s.get("pgid"), int) and s["pgid"] > 1]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
