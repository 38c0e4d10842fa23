"""Child processes of a load run: started in their own process group, stopped by it (SIGTERM, then
SIGKILL), never by name. Also free ports, readiness waits, ``taskset`` CPU lists and the fake upstream."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LOADTESTS = Path(__file__).resolve().parents[1]
REPO = LOADTESTS.parent


class Procs:
    """The processes this run started; each leads its own process group and is stopped by it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str] | str, log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` (a list, or a string run by the shell) with stdout+stderr to ``log``."""
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, shell=isinstance(cmd, str), **kw
            )
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the group ``p`` leads, SIGKILL if it is still there 10 s later; forgets ``p``."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if p.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(wait)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


PROCS = Procs()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus_list(spec: str) -> set[int]:
    """``"0,2-3"`` -> {0, 2, 3}; ``""`` -> empty (unpinned)."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class NotReady(Exception):
    """A started process exited, or did not answer its readiness URL in time; the message says which."""


def answers(url: str, ok: tuple[int, ...] = (200,), timeout: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers with one of ``ok`` (any status below 500 when ``ok`` is empty)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            status = int(r.status)
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, ValueError):
        return False
    return status in ok if ok else status < 500


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None, log: Path, ok: tuple[int, ...] = (200,)
) -> None:
    """Poll ``url`` until it answers (see :func:`answers`); :class:`NotReady` with the log's tail if
    ``proc`` exits first or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise NotReady(f"process exited with {proc.returncode} before {url} answered:\n{tail(log)}")
        if answers(url, ok):
            return
        time.sleep(0.2)
    raise NotReady(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def start_fake(
    tmp: Path,
    *,
    served_model: str,
    ttft_ms: float = 20.0,
    itl_ms: float = 2.0,
    tokens: int = 16,
    ns_delay_ms: float = 0.0,
    uvloop: bool = False,
    cpus: str = "",
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``loadtests/fake_upstream.py`` on a free port (its log in ``tmp``); returns (base URL, process)."""
    cmd = [sys.executable, str(LOADTESTS / "fake_upstream.py"), "--port", "0", "--model", served_model]
    cmd += ["--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--tokens", str(tokens)]
    cmd += ["--ns-delay-ms", str(ns_delay_ms)]
    if uvloop:
        cmd.append("--uvloop")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    log = tmp / "fake_upstream.log"
    p = PROCS.start(cmd, log)
    end = time.monotonic() + 15
    while time.monotonic() < end:
        txt = tail(log)
        if "LISTENING" in txt:
            port = int(txt.split("LISTENING", 1)[1].split()[0])
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", 10, p, log)
            return url, p
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise NotReady(f"fake upstream did not start:\n{tail(log)}")
