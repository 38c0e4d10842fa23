"""What does the gateway hop cost? Direct-to-upstream vs through-the-gateway, in one run.

Starts its own upstream (``loadtests/fake_upstream.py``, a fast vLLM-shaped fake) — or uses a
real one with ``--upstream`` — and its own gateway (``llm-gateway serve --config <generated>``
under uvicorn, as deployed), by default pinned with ``taskset`` to one core while this client and
the fake run on the other core(s). Then, for each concurrency in ``--conc``:

  * ``--rounds`` interleaved rounds (direct then via, via then direct, ...) of ``--n`` streaming
    chat requests, ``conc`` at a time, each worker on its own keep-alive connection;
  * TTFT = time from writing the request to the first ``data: {`` byte of the response;
  * added TTFT = via - direct, for the pooled p50 and p99, and the median of the per-round p50s;
  * streamed requests/s per side (median of rounds);
  * the gateway's CPU ms per streamed request: utime+stime of its process from /proc, over the via
    rounds only, divided by the requests they completed (the client's and the fake's CPU likewise);
  * "foreign CPU": machine busy time (/proc/stat) minus client + fake + gateway, in cores — how
    much other work competed with the run.

Then non-streaming requests/s at ``--ns-conc`` (default 64) direct vs via, interleaved rounds,
with the gateway's CPU ms per request. Prints a markdown table, writes JSON to ``--out``.

Real backend: ``--upstream http://127.0.0.1:8001 --model smollm2-135m --served-model smollm2``
defaults to concurrency 1,4,16, max_tokens 32, ``ignore_eos: true``, no non-streaming phase.

Profiling: ``--profile-seconds S`` afterwards runs via-only streaming load at ``--profile-conc``
for S seconds while ``py-spy record`` (must be installed, e.g. ``.venv/bin/pip install py-spy``)
samples the gateway, then prints where its CPU went (self time by function and by package,
inclusive time of the gateway's own functions), and writes the raw stacks beside ``--out``.

The load client is raw asyncio (a Protocol per connection, pre-encoded requests, incremental
HTTP/1.1 + chunked parsing), light enough to leave the CPU to the gateway; its CPU per request is
reported. Dependencies: the standard library, httpx and orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARK = b"data: {"

# ============================================================================ processes


class Procs:
    """The processes this run started; each leads its own process group and is stopped by it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with open(log, "wb") as fh:
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if p.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(wait)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()


PROCS = Procs()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus_list(spec: str) -> set[int]:
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


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None, log: Path, ok: tuple[int, ...] = (200,)
) -> None:
    end = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as c:
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"process exited with {proc.returncode} before {url} answered:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if c.get(url).status_code in ok:
                    return
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def start_fake(a: argparse.Namespace, tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    cmd = [
        sys.executable,
        str(HERE / "fake_upstream.py"),
        "--port",
        "0",
        "--model",
        a.served_model,
        "--ttft-ms",
        str(a.ttft_ms),
        "--itl-ms",
        str(a.itl_ms),
        "--tokens",
        str(a.tokens),
        "--ns-delay-ms",
        str(a.ns_delay_ms),
    ]
    if a.uvloop:
        cmd.append("--uvloop")
    if a.bench_cpus_set:
        cmd = ["taskset", "-c", a.bench_cpus, *cmd]
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
    raise SystemExit(f"fake upstream did not start:\n{tail(log)}")


def gateway_exe(a: argparse.Namespace) -> str:
    if a.gateway_bin:
        return str(Path(a.gateway_bin).resolve()) if "/" in a.gateway_bin else str(a.gateway_bin)
    for cand in (Path(sys.executable).parent / "llm-gateway", REPO / ".venv" / "bin" / "llm-gateway"):
        if cand.exists():
            return str(cand)
    found = shutil.which("llm-gateway")
    if not found:
        raise SystemExit("llm-gateway not found; pass --gateway-bin (e.g. .venv/bin/llm-gateway)")
    return found


def start_gateway(a: argparse.Namespace, upstream: str, tmp: Path) -> tuple[str, subprocess.Popen[bytes], Path]:
    port = free_port()
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": a.gateway_log_level},
        "backends": [{"name": "bench-upstream", "url": upstream, "served_model": a.served_model}],
        "arms": [
            {"name": "bench-plain", "model": a.model, "backends": ["bench-upstream"], "strategy": {"kind": "plain"}}
        ],
    }
    if a.routed:
        # every arm the artifact knows, all on the one upstream; via requests say model "auto"
        artifact = Path(a.routed).resolve()
        arms = json.loads((artifact / "router.json").read_text())["arms"]
        cfg["arms"] = [
            {"name": n, "model": a.model, "backends": ["bench-upstream"], "strategy": {"kind": "plain"}} for n in arms
        ]
        cfg["routing"] = {"policy": "learned", "params": {"artifact": str(artifact)}}
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(cfg, indent=1) + "\n")  # JSON is YAML
    exe = gateway_exe(a)
    cmd = [sys.executable, exe] if exe.endswith(".py") else [exe]  # a .py (gateway_variant.py) runs on this Python
    cmd += ["serve", "--config", str(path)]
    if a.gateway_cpus_set:
        cmd = ["taskset", "-c", a.gateway_cpus, *cmd]  # taskset execs: the pid stays the gateway's
    log = tmp / "gateway.log"
    p = PROCS.start(cmd, log, cwd=str(tmp))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready", 60, p, log)
    return url, p, path


# ============================================================================ CPU accounting (/proc)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # everything but idle and iowait


def established_to(port: int, pid: int | None = None) -> int:
    """ESTABLISHED TCP connections to 127.0.0.1:port (from /proc/net/tcp); with pid, only that process's sockets."""
    inodes: set[str] | None = None
    if pid is not None:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    n = 0
    want = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[2] == want and parts[3] == "01" and (inodes is None or parts[9] in inodes):
                n += 1
    return n


class CpuMeter:
    """CPU seconds of the gateway, the fake and this client, plus machine busy time, between snapshots."""

    def __init__(self, gateway_pid: int, fake_pid: int | None) -> None:
        self.gw, self.fake = gateway_pid, fake_pid

    def snap(self) -> tuple[float, float, float, float, float]:
        return (
            proc_cpu_s(self.gw),
            proc_cpu_s(self.fake) if self.fake else 0.0,
            self_cpu_s(),
            machine_busy_s(),
            time.perf_counter(),
        )

    @staticmethod
    def delta(s0: tuple[float, ...], s1: tuple[float, ...]) -> dict[str, float]:
        d = [b - a for a, b in zip(s0, s1, strict=True)]
        return {"gateway": d[0], "fake": d[1], "client": d[2], "busy": d[3], "wall": d[4]}


# ============================================================================ load client


class HttpConn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time. Records the time to the first
    ``data: {`` byte (TTFT) and to the end of the response; parses Content-Length and chunked bodies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.body = bytearray()
        self.fut: asyncio.Future[tuple[int, bytes, float | None, float]] | None = None
        self.lost = False
        self.t0 = 0.0
        self.ttft: float | None = None
        self.tail = b""
        self.state = 0  # 0 head, 1 content-length body, 2 chunk size, 3 chunk data, 4 trailers
        self.need = 0
        self.status = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection closed mid-response ({exc})"))

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes, float | None, float]]:
        self.fut = asyncio.get_running_loop().create_future()
        self.state, self.ttft, self.tail, self.close_after = 0, None, b"", False
        self.body = bytearray()
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(raw)
        return self.fut

    def data_received(self, data: bytes) -> None:
        if self.ttft is None:
            s = self.tail + data
            if MARK in s:
                self.ttft = time.perf_counter() - self.t0
            else:
                self.tail = s[-(len(MARK) - 1) :]
        self.buf += data
        self.parse()

    def parse(self) -> None:
        buf = self.buf
        while True:
            st = self.state
            if st == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(b" ", 2)[1])
                chunked, length = False, 0
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"transfer-encoding":
                        chunked = b"chunked" in v.lower()
                    elif k == b"connection":
                        self.close_after = v.strip().lower() == b"close"
                if chunked:
                    self.state = 2
                else:
                    self.state, self.need = 1, length
            elif st == 1:
                if len(buf) < self.need:
                    return
                self.body += buf[: self.need]
                del buf[: self.need]
                return self.done()
            elif st == 2:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
                del buf[: i + 2]
                if size == 0:
                    self.state = 4
                else:
                    self.state, self.need = 3, size + 2
            elif st == 3:
                if len(buf) < self.need:
                    return
                self.body += buf[: self.need - 2]
                del buf[: self.need]
                self.state = 2
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[: i + 2]
                if i == 0:
                    return self.done()

    def done(self) -> None:
        total = time.perf_counter() - self.t0
        fut, self.fut = self.fut, None
        if self.close_after and self.transport is not None:
            self.transport.close()
            self.lost = True
        if fut is not None and not fut.done():
            fut.set_result((self.status, bytes(self.body), self.ttft, total))


class Target:
    """One side of the comparison: where to send, and the request bytes, pre-encoded."""

    def __init__(self, name: str, base: str, model: str, body_extra: dict[str, Any], max_tokens: int) -> None:
        self.name = name
        hostport = base.split("://", 1)[1].split("/", 1)[0]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.model = model

        def raw(stream: bool) -> bytes:
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                "max_tokens": max_tokens,
                "stream": stream,
                **body_extra,
            }
            if not stream:
                body.pop("stream_options", None)
            b = orjson.dumps(body)
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\n"
                f"accept: */*\r\ncontent-length: {len(b)}\r\n\r\n"
            ).encode()
            return head + b

        self.stream_raw = raw(True)
        self.plain_raw = raw(False)

    async def connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(HttpConn, self.host, self.port)
        return proto


class RoundResult:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.ok = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.wall = 0.0


async def run_round(t: Target, n: int, conc: int, stream: bool, think_s: float = 0.0) -> RoundResult:
    """n requests, conc workers, each on its own keep-alive connection (opened when the round starts);
    a worker pauses ``think_s`` after each answer."""
    res = RoundResult()
    left = n
    raw = t.stream_raw if stream else t.plain_raw

    async def worker() -> None:
        nonlocal left
        conn: HttpConn | None = None
        while left > 0:
            left -= 1
            try:
                if conn is None or conn.lost:
                    conn = await t.connect()
                status, body, ttft, total = await conn.request(raw)
            except (OSError, ConnectionError) as exc:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"{type(exc).__name__}: {exc}")
                conn = None
                continue
            if think_s > 0:
                await asyncio.sleep(think_s)
            good = status == 200 and (
                (ttft is not None and body.endswith(b"data: [DONE]\n\n")) if stream else b'"choices"' in body
            )
            if good:
                res.ok += 1
                res.total.append(total)
                if stream and ttft is not None:
                    res.ttft.append(ttft)
            else:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"status {status}: {body[:200]!r}")
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    res.wall = time.perf_counter() - t0
    return res


# ============================================================================ statistics


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(1, -(-len(s) * q // 1))  # ceil(n q)
    return s[min(len(s), int(k)) - 1]


def ms(x: float) -> float:
    return round(x * 1000, 3)


async def measure_streaming(
    direct: Target, via: Target, meter: CpuMeter, conc: int, n: int, rounds: int, think_s: float = 0.0
) -> dict[str, Any]:
    sides: dict[str, dict[str, Any]] = {
        s: {
            "ttft": [],
            "total": [],
            "rps": [],
            "p50": [],
            "ok": 0,
            "errors": 0,
            "samples": [],
            "cpu": defaultdict(float),
        }
        for s in ("direct", "via")
    }
    phase0 = meter.snap()
    for r in range(rounds):
        order = ("direct", "via") if r % 2 == 0 else ("via", "direct")
        for side in order:
            tgt = direct if side == "direct" else via
            s0 = meter.snap()
            res = await run_round(tgt, n, conc, stream=True, think_s=think_s)
            d = meter.delta(s0, meter.snap())
            acc = sides[side]
            acc["ttft"] += res.ttft
            acc["total"] += res.total
            acc["rps"].append(res.ok / res.wall if res.wall else 0.0)
            acc["p50"].append(statistics.median(res.ttft) if res.ttft else float("nan"))
            acc["ok"] += res.ok
            acc["errors"] += res.errors
            acc["samples"] += res.error_samples[: 3 - len(acc["samples"])]
            for k, v in d.items():
                acc["cpu"][k] += v
    phase = meter.delta(phase0, meter.snap())
    return summarize(sides, phase, conc, n, rounds, stream=True)


async def measure_plain(direct: Target, via: Target, meter: CpuMeter, conc: int, n: int, rounds: int) -> dict[str, Any]:
    sides: dict[str, dict[str, Any]] = {
        s: {
            "ttft": [],
            "total": [],
            "rps": [],
            "p50": [],
            "ok": 0,
            "errors": 0,
            "samples": [],
            "cpu": defaultdict(float),
        }
        for s in ("direct", "via")
    }
    phase0 = meter.snap()
    for r in range(rounds):
        order = ("direct", "via") if r % 2 == 0 else ("via", "direct")
        for side in order:
            tgt = direct if side == "direct" else via
            s0 = meter.snap()
            res = await run_round(tgt, n, conc, stream=False)
            d = meter.delta(s0, meter.snap())
            acc = sides[side]
            acc["total"] += res.total
            acc["rps"].append(res.ok / res.wall if res.wall else 0.0)
            acc["ok"] += res.ok
            acc["errors"] += res.errors
            acc["samples"] += res.error_samples[: 3 - len(acc["samples"])]
            for k, v in d.items():
                acc["cpu"][k] += v
    phase = meter.delta(phase0, meter.snap())
    return summarize(sides, phase, conc, n, rounds, stream=False)


def summarize(
    sides: dict[str, dict[str, Any]], phase: dict[str, float], conc: int, n: int, rounds: int, stream: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"conc": conc, "n_per_round": n, "rounds": rounds, "stream": stream}
    for side, acc in sides.items():
        ok = max(acc["ok"], 1)
        cpu = acc["cpu"]
        o: dict[str, Any] = {
            "ok": acc["ok"],
            "errors": acc["errors"],
            "error_samples": acc["samples"],
            "rps_median": round(statistics.median(acc["rps"]), 1) if acc["rps"] else None,
            "rps_rounds": [round(x, 1) for x in acc["rps"]],
            "latency_p50_ms": ms(pct(acc["total"], 0.5)),
            "latency_p99_ms": ms(pct(acc["total"], 0.99)),
            "client_cpu_ms_per_req": round(cpu["client"] / ok * 1000, 4),
            "fake_cpu_ms_per_req": round(cpu["fake"] / ok * 1000, 4),
            "wall_s": round(cpu["wall"], 3),
        }
        if side == "via":
            o["gateway_cpu_ms_per_req"] = round(cpu["gateway"] / ok * 1000, 4)
            o["gateway_cpu_cores"] = round(cpu["gateway"] / cpu["wall"], 3) if cpu["wall"] else None
        if stream:
            o.update(
                ttft_p50_ms=ms(pct(acc["ttft"], 0.5)),
                ttft_p90_ms=ms(pct(acc["ttft"], 0.9)),
                ttft_p99_ms=ms(pct(acc["ttft"], 0.99)),
                ttft_round_p50_ms=[ms(x) for x in acc["p50"]],
            )
        out[side] = o
    if stream:
        d, v = out["direct"], out["via"]
        out["added_ttft_p50_ms"] = round(v["ttft_p50_ms"] - d["ttft_p50_ms"], 3)
        out["added_ttft_p99_ms"] = round(v["ttft_p99_ms"] - d["ttft_p99_ms"], 3)
        per_round = [round((b - a) * 1000, 3) for a, b in zip(sides["direct"]["p50"], sides["via"]["p50"], strict=True)]
        out["added_ttft_p50_per_round_ms"] = per_round
        out["added_ttft_p50_round_median_ms"] = round(statistics.median(per_round), 3) if per_round else None
    ours = phase["gateway"] + phase["fake"] + phase["client"]
    out["foreign_cpu_cores"] = round(max(phase["busy"] - ours, 0.0) / phase["wall"], 3) if phase["wall"] else None
    out["phase_wall_s"] = round(phase["wall"], 2)
    return out


# ============================================================================ profiling (py-spy)


def summarize_pyspy(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts from py-spy's raw (collapsed) output."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    total = 0

    def where(frame: str) -> tuple[str, str]:
        # "func (path/to/file.py:123)" -> ("func (file path)", package)
        name, _, loc = frame.rpartition(" (")
        path = loc.rstrip(")").rsplit(":", 1)[0]
        if "site-packages/" in path:
            rel = path.split("site-packages/", 1)[1]
        elif "/lib/python" in path:
            rel = "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
        else:
            rel = path.replace(str(REPO) + "/", "")
        pkg = rel.split("/", 1)[0].removesuffix(".py")
        if rel.startswith("stdlib/"):
            pkg = rel.split("/")[1].removesuffix(".py")
        return f"{name} ({rel})", pkg

    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += c
        named = [where(f) for f in frames]
        fn, pkg = named[-1]
        self_fn[fn] += c
        self_pkg[pkg] += c
        for f in {n for n, _ in named}:
            incl_fn[f] += c
        for f in {n for n, p in named if p in ("gateway", "router")}:
            incl_ours[f] += c

    def share(cnt: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in cnt.most_common(top)]

    return {
        "samples": total,
        "self_by_function_pct": share(self_fn),
        "self_by_package_pct": share(self_pkg),
        "inclusive_ours_pct": share(incl_ours),
        "inclusive_all_pct": share(incl_fn),
    }


async def profile_load(via: Target, meter: CpuMeter, a: argparse.Namespace, out_raw: Path) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy not found (pip install py-spy into the venv)"}
    cmd = [
        spy,
        "record",
        "--pid",
        str(meter.gw),
        "--rate",
        str(a.profile_rate),
        "--duration",
        str(a.profile_seconds),
        "--format",
        "raw",
        "--output",
        str(out_raw),
    ]
    # --nonblocking does not pause the gateway to sample it; --native (C frames) needs the pauses
    cmd.append("--native" if a.profile_native else "--nonblocking")
    if a.bench_cpus_set:
        cmd = ["taskset", "-c", a.bench_cpus, *cmd]
    log = out_raw.with_suffix(".log")
    spy_p = PROCS.start(cmd, log)
    await asyncio.sleep(1.0)  # let py-spy attach
    s0 = meter.snap()
    done = 0
    end = time.monotonic() + a.profile_seconds - 1.5
    while time.monotonic() < end and spy_p.poll() is None:
        r = await run_round(via, max(a.profile_conc * 8, 64), a.profile_conc, stream=not a.profile_plain)
        done += r.ok
    d = meter.delta(s0, meter.snap())
    await asyncio.get_running_loop().run_in_executor(None, spy_p.wait)
    if not out_raw.exists():
        return {"error": f"py-spy wrote nothing: {tail(log, 500)}"}
    summ = summarize_pyspy(out_raw)
    summ.update(
        kind="non-streaming" if a.profile_plain else "streaming",
        requests=done,
        conc=a.profile_conc,
        gateway_cpu_ms_per_req=round(d["gateway"] / max(done, 1) * 1000, 4),
        note=f"py-spy {'--native (pausing)' if a.profile_native else '--nonblocking'} sampling; "
        "shares are of the gateway's on-CPU samples",
        raw=str(out_raw),
    )
    return summ


async def count_syscalls(via: Target, meter: CpuMeter, a: argparse.Namespace) -> dict[str, Any]:
    strace = shutil.which("strace")
    if not strace:
        return {"error": "strace not found"}
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt")[1])
    cmd = [strace, "-c", "-f", "-o", str(out), "-p", str(meter.gw)]
    if a.bench_cpus_set:
        cmd = ["taskset", "-c", a.bench_cpus, *cmd]
    p = PROCS.start(cmd, out.with_suffix(".log"))
    await asyncio.sleep(1.0)  # attach
    r = await run_round(via, a.syscalls, a.profile_conc, stream=not a.profile_plain)
    await asyncio.sleep(0.3)
    os.kill(p.pid, signal.SIGINT)  # strace detaches and writes its summary
    await asyncio.get_running_loop().run_in_executor(None, p.wait)
    per: dict[str, float] = {}
    for line in out.read_text(errors="replace").splitlines():
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(f) >= 5 and f[0].replace(".", "", 1).isdigit() and f[3].isdigit() and f[-1] != "total":
            per[f[-1]] = round(int(f[3]) / max(r.ok, 1), 2)
    out.unlink(missing_ok=True)
    top = dict(sorted(per.items(), key=lambda kv: -kv[1])[:15])
    return {
        "requests": r.ok,
        "errors": r.errors,
        "conc": a.profile_conc,
        "kind": "non-streaming" if a.profile_plain else "streaming",
        "calls_per_request": top,
        "total_per_request": round(sum(per.values()), 1),
    }


# ============================================================================ report


def fmt(x: Any, d: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)


def markdown(res: dict[str, Any]) -> str:
    out = []
    out.append(
        "| streams | TTFT p50 direct / via (ms) | TTFT p99 direct / via (ms) | added TTFT p50 / p99 (ms) "
        "| added p50, median of rounds (ms) | streamed req/s direct / via | gateway CPU ms / streamed req "
        "| client CPU ms/req direct / via | errors | foreign CPU (cores) | gateway->upstream conns after |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in res["streaming"]:
        d, v = s["direct"], s["via"]
        out.append(
            f"| {s['conc']} | {fmt(d['ttft_p50_ms'])} / {fmt(v['ttft_p50_ms'])} "
            f"| {fmt(d['ttft_p99_ms'])} / {fmt(v['ttft_p99_ms'])} "
            f"| {fmt(s['added_ttft_p50_ms'])} / {fmt(s['added_ttft_p99_ms'])} "
            f"| {fmt(s['added_ttft_p50_round_median_ms'])} "
            f"| {fmt(d['rps_median'], 0)} / {fmt(v['rps_median'], 0)} | {fmt(v['gateway_cpu_ms_per_req'], 3)} "
            f"| {fmt(d['client_cpu_ms_per_req'], 3)} / {fmt(v['client_cpu_ms_per_req'], 3)} "
            f"| {d['errors'] + v['errors']} | {fmt(s['foreign_cpu_cores'])} "
            f"| {s.get('gateway_upstream_conns_after', '?')} |"
        )
    ns = res.get("non_streaming")
    if ns:
        d, v = ns["direct"], ns["via"]
        out.append("")
        out.append(
            f"| non-streaming @ {ns['conc']} | req/s direct | req/s via | latency p50 / p99 direct (ms) "
            "| latency p50 / p99 via (ms) "
            "| gateway CPU ms / req | gateway CPU (cores) | client CPU ms/req direct / via | errors "
            "| foreign CPU (cores) "
            "| gateway->upstream conns before / after |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        out.append(
            f"| {ns['rounds']} rounds x {ns['n_per_round']} | {fmt(d['rps_median'], 0)} | {fmt(v['rps_median'], 0)} "
            f"| {fmt(d['latency_p50_ms'])} / {fmt(d['latency_p99_ms'])} "
            f"| {fmt(v['latency_p50_ms'])} / {fmt(v['latency_p99_ms'])} "
            f"| {fmt(v['gateway_cpu_ms_per_req'], 3)} | {fmt(v['gateway_cpu_cores'])} "
            f"| {fmt(d['client_cpu_ms_per_req'], 3)} / {fmt(v['client_cpu_ms_per_req'], 3)} "
            f"| {d['errors'] + v['errors']} | {fmt(ns['foreign_cpu_cores'])} "
            f"| {ns.get('gateway_upstream_conns_before', '?')} / {ns.get('gateway_upstream_conns_after', '?')} |"
        )
    t = res.get("targets")
    if t:
        out.append("")
        out.append("| target | measured | met? |")
        out.append("|---|---|---|")
        for row in t:
            out.append(f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'NO'} |")
    return "\n".join(out)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    by = {s["conc"]: s for s in res["streaming"]}
    if 64 in by:
        s = by[64]
        rows.append(
            {
                "target": "added TTFT p50 <= 1 ms @ 64 streams",
                "measured": f"{s['added_ttft_p50_ms']:.2f} ms "
                f"(median of rounds {s['added_ttft_p50_round_median_ms']:.2f} ms)",
                "met": s["added_ttft_p50_ms"] <= 1.0,
            }
        )
        rows.append(
            {
                "target": "added TTFT p99 <= 5 ms @ 64 streams",
                "measured": f"{s['added_ttft_p99_ms']:.2f} ms",
                "met": s["added_ttft_p99_ms"] <= 5.0,
            }
        )
    cpus = [(s["conc"], s["via"]["gateway_cpu_ms_per_req"]) for s in res["streaming"]]
    if cpus:
        worst = max(c for _, c in cpus)
        rows.append(
            {
                "target": "gateway CPU <= 1 ms per streamed request",
                "measured": ", ".join(f"{c:.2f} ms @{k}" for k, c in cpus),
                "met": worst <= 1.0,
            }
        )
    ns = res.get("non_streaming")
    if ns and res["config"]["gateway_cpus"]:
        rows.append(
            {
                "target": "non-streaming >= 1,000 req/s, gateway on one core",
                "measured": f"{ns['via']['rps_median']:.0f} req/s (direct {ns['direct']['rps_median']:.0f})",
                "met": ns["via"]["rps_median"] >= 1000,
            }
        )
    return rows


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "llm-gateway",
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "fastapi",
        "httpx",
        "httpcore",
        "h11",
        "anyio",
        "orjson",
        "pydantic",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg(), "platform": platform.platform()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "gateway", "router"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        info["git"] = head + (" (gateway/ or router/ modified)" if dirty else "")
    return info


# ============================================================================ main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="loadtests/overhead.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = ap.add_argument_group("workload")
    g.add_argument("--conc", help="streaming concurrencies, comma separated (default 1,16,64; with --upstream 1,4,16)")
    g.add_argument(
        "--n",
        type=int,
        help="streaming requests per round and side (default max(64, 8 x conc); with --upstream max(8, 2 x conc))",
    )
    g.add_argument(
        "--rounds", type=int, help="interleaved direct/via rounds per concurrency (default 7; with --upstream 3)"
    )
    g.add_argument("--max-tokens", type=int, help="max_tokens of every request (default 16; with --upstream 32)")
    g.add_argument(
        "--include-usage",
        action="store_true",
        help="ask for stream_options.include_usage (default: not, as most clients)",
    )
    g.add_argument("--no-ignore-eos", action="store_true", help="with --upstream: do not send ignore_eos: true")
    g.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="pause of each streaming worker after each answer (default 0; vLLM-CPU on 2 cores delivers "
        "back-to-back streams in one burst at the end, so --upstream runs want ~1000)",
    )
    g.add_argument(
        "--ns-requests",
        type=int,
        help="non-streaming requests per round and side (default 3000; with --upstream 0 = skip)",
    )
    g.add_argument("--ns-conc", type=int, default=64, help="non-streaming concurrency (default 64)")
    g.add_argument(
        "--routed",
        metavar="ARTIFACT",
        help="routing included: the gateway runs the learned policy with this artifact (one arm per artifact "
        "arm, all on the upstream) and every via request says model 'auto'",
    )
    g.add_argument("--ns-rounds", type=int, help="non-streaming rounds (default: --rounds)")
    f = ap.add_argument_group("fake upstream (default mode)")
    f.add_argument("--ttft-ms", type=float, default=20.0)
    f.add_argument("--itl-ms", type=float, default=2.0)
    f.add_argument("--tokens", type=int, default=16)
    f.add_argument("--ns-delay-ms", type=float, default=0.0, help="delay of the fake's non-streaming answers")
    r = ap.add_argument_group("real upstream")
    r.add_argument(
        "--upstream",
        help="base URL of a real OpenAI-compatible server (e.g. http://127.0.0.1:8001); no fake is started",
    )
    r.add_argument(
        "--model", default="smol", help="public model name of the generated gateway config (sent via the gateway)"
    )
    r.add_argument("--served-model", default="smol-served", help="the upstream's model name (sent direct)")
    p = ap.add_argument_group("processes")
    ncpu = os.cpu_count() or 1
    p.add_argument(
        "--gateway-cpus",
        default=str(ncpu - 1),
        help=f"taskset CPU list for the gateway ('' = unpinned; default {ncpu - 1})",
    )
    p.add_argument(
        "--bench-cpus",
        default=None,
        help="CPU list for this client and the fake (default: the CPUs not given to the gateway; '' = unpinned)",
    )
    p.add_argument("--no-pin", action="store_true", help="pin nothing")
    p.add_argument("--gateway-bin", help="llm-gateway executable (default: beside this Python, then .venv/bin)")
    p.add_argument("--gateway-log-level", default="info")
    p.add_argument("--uvloop", action="store_true", help="run this client and the fake on uvloop (if installed)")
    o = ap.add_argument_group("output and profiling")
    o.add_argument("--out", help="write the JSON results here")
    o.add_argument("--md", help="also write the markdown tables here")
    o.add_argument(
        "--profile-seconds",
        type=int,
        default=0,
        help="after the comparison, py-spy the gateway under via-only load this long",
    )
    o.add_argument("--profile-conc", type=int, default=16)
    o.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    o.add_argument("--profile-only", action="store_true", help="skip the comparison, only profile")
    o.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames (uvloop, httptools) too")
    o.add_argument(
        "--syscalls",
        type=int,
        default=0,
        help="afterwards, count the gateway's system calls per request with strace -c over this many via "
        "requests at --profile-conc (strace slows the gateway; only the counts mean anything)",
    )
    o.add_argument("--profile-plain", action="store_true", help="profile non-streaming requests instead of streams")
    p.add_argument(
        "--restart-gateway",
        action="store_true",
        help="a fresh gateway for each phase (each concurrency, non-streaming, profile): its upstream pool "
        "then holds only what that phase opened",
    )
    o.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="measure the idle gateway's CPU (its health checks) this long first; per-request CPU is also "
        "reported net of it (default 5)",
    )
    o.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder (configs, logs)")
    return ap


def resolve(a: argparse.Namespace) -> None:
    real = bool(a.upstream)
    a.conc_list = [int(x) for x in (a.conc or ("1,4,16" if real else "1,16,64")).split(",") if x.strip()]
    a.rounds = a.rounds or (3 if real else 7)
    a.ns_rounds = a.ns_rounds or a.rounds
    a.max_tokens = a.max_tokens or (32 if real else 16)
    a.ns_requests = (0 if real else 3000) if a.ns_requests is None else a.ns_requests
    if a.no_pin:
        a.gateway_cpus, a.bench_cpus = "", ""
    gw = cpus_list(a.gateway_cpus)
    if a.bench_cpus is None:
        rest = sorted(set(range(os.cpu_count() or 1)) - gw) if gw else []
        a.bench_cpus = ",".join(map(str, rest))
    a.gateway_cpus_set, a.bench_cpus_set = gw, cpus_list(a.bench_cpus)


def net_of_idle(phase: dict[str, Any], idle_ms_per_s: float) -> None:
    """Add the gateway's CPU per request minus what its idle health checks cost over the via rounds."""
    v = phase["via"]
    if v["ok"]:
        idle_ms = idle_ms_per_s * v["wall_s"]
        v["gateway_cpu_ms_per_req_net_idle"] = round(max(v["gateway_cpu_ms_per_req"] - idle_ms / v["ok"], 0.0), 4)


class Bench:
    """The processes of one run: the upstream (fake or real), our gateway (restartable), the two targets."""

    def __init__(self, a: argparse.Namespace, tmp: Path) -> None:
        self.a, self.tmp = a, tmp
        if a.upstream:
            self.up_url, self.fake_pid = a.upstream.rstrip("/"), None
        else:
            self.up_url, fake = start_fake(a, tmp)
            self.fake_pid = fake.pid
        self.up_port = int(self.up_url.rsplit(":", 1)[1].split("/")[0])
        self.extra: dict[str, Any] = {}
        if a.include_usage:
            self.extra["stream_options"] = {"include_usage": True}
        if a.upstream and not a.no_ignore_eos:
            self.extra["ignore_eos"] = True
        self.direct = Target("direct", self.up_url, a.served_model, self.extra, a.max_tokens)
        self.gw: subprocess.Popen[bytes] | None = None
        self.start_gateway()

    def start_gateway(self) -> None:
        if self.gw is not None:
            PROCS.stop(self.gw)
            PROCS.procs.remove(self.gw)
        self.gw_url, self.gw, self.cfg_path = start_gateway(self.a, self.up_url, self.tmp)
        self.via = Target("via", self.gw_url, "auto" if self.a.routed else self.a.model, self.extra, self.a.max_tokens)
        self.meter = CpuMeter(self.gw.pid, self.fake_pid)

    async def warm_up(self) -> None:
        """Both sides, both kinds; the via answer must carry the public model name."""
        for t in (self.direct, self.via):
            for stream in (True, False):
                rr = await run_round(t, 8, 4, stream)
                if rr.ok == 0:
                    raise SystemExit(f"warm-up against {t.name} failed: {rr.error_samples}")
        conn = await self.via.connect()
        status, body, _, _ = await conn.request(self.via.plain_raw)
        conn.transport.close()  # type: ignore[union-attr]
        if status != 200 or orjson.dumps(self.a.model) not in body:  # the public name, also when routed
            raise SystemExit(f"via answer lacks the public model name: {status} {body[:300]!r}")

    async def fresh(self, first: bool) -> None:
        if self.a.restart_gateway and not first:
            self.start_gateway()
            await self.warm_up()


async def run_all(a: argparse.Namespace, b: Bench, res: dict[str, Any]) -> None:
    await b.warm_up()
    # the gateway's idle CPU (it health-checks the upstream every 2 s)
    g0, t0 = proc_cpu_s(b.meter.gw), time.perf_counter()
    await asyncio.sleep(a.idle_seconds)
    res["gateway_idle_cpu_ms_per_s"] = round((proc_cpu_s(b.meter.gw) - g0) / (time.perf_counter() - t0) * 1000, 3)
    first = True
    if not a.profile_only:
        for conc in a.conc_list:
            await b.fresh(first)
            first = False
            n = a.n or (max(8, 2 * conc) if a.upstream else max(64, 8 * conc))
            print(f"== streaming, {conc} concurrent, {a.rounds} rounds x {n} per side", flush=True)
            s = await measure_streaming(b.direct, b.via, b.meter, conc, n, a.rounds, a.think_ms / 1000)
            s["gateway_upstream_conns_after"] = established_to(b.up_port, b.meter.gw)
            net_of_idle(s, res["gateway_idle_cpu_ms_per_s"])
            res["streaming"].append(s)
            print(
                f"   TTFT p50 direct {s['direct']['ttft_p50_ms']:.2f} via {s['via']['ttft_p50_ms']:.2f} ms "
                f"(added {s['added_ttft_p50_ms']:.2f}, p99 added {s['added_ttft_p99_ms']:.2f}); "
                f"gateway CPU {s['via']['gateway_cpu_ms_per_req']:.3f} ms/req; "
                f"errors {s['direct']['errors'] + s['via']['errors']}; "
                f"gateway->upstream connections {s['gateway_upstream_conns_after']}",
                flush=True,
            )
        if a.ns_requests > 0:
            await b.fresh(first)
            first = False
            print(
                f"== non-streaming, {a.ns_conc} concurrent, {a.ns_rounds} rounds x {a.ns_requests} per side", flush=True
            )
            before = established_to(b.up_port, b.meter.gw)
            ns = await measure_plain(b.direct, b.via, b.meter, a.ns_conc, a.ns_requests, a.ns_rounds)
            ns["gateway_upstream_conns_before"] = before
            ns["gateway_upstream_conns_after"] = established_to(b.up_port, b.meter.gw)
            net_of_idle(ns, res["gateway_idle_cpu_ms_per_s"])
            res["non_streaming"] = ns
            print(
                f"   req/s direct {ns['direct']['rps_median']:.0f} via {ns['via']['rps_median']:.0f}; "
                f"gateway CPU {ns['via']['gateway_cpu_ms_per_req']:.3f} ms/req; "
                f"gateway->upstream connections {ns['gateway_upstream_conns_after']}",
                flush=True,
            )
    if a.profile_seconds > 0:
        await b.fresh(first)
        raw = Path(a.out).with_suffix(".pyspy.txt") if a.out else Path(tempfile.gettempdir()) / "overhead.pyspy.txt"
        print(
            f"== profiling the gateway for {a.profile_seconds} s at {a.profile_conc} "
            f"{'non-streaming' if a.profile_plain else 'streams'}",
            flush=True,
        )
        res["profile"] = await profile_load(b.via, b.meter, a, raw)
    if a.syscalls > 0:
        print(
            f"== counting the gateway's syscalls (strace -c) over {a.syscalls} requests at {a.profile_conc}", flush=True
        )
        res["syscalls"] = await count_syscalls(b.via, b.meter, a)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    resolve(a)
    if a.bench_cpus_set:
        os.sched_setaffinity(0, a.bench_cpus_set)
    if a.uvloop:
        try:
            import uvloop  # type: ignore[import-not-found]

            uvloop.install()
        except ImportError:
            print("uvloop not installed; the client uses the standard asyncio loop", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res: dict[str, Any] = {"streaming": [], "machine": machine(), "versions": versions()}
    try:
        b = Bench(a, tmp)
        print(
            f"upstream {b.up_url} (fake pid {b.fake_pid}), gateway {b.gw_url} pid {b.meter.gw} "
            f"(cpus {a.gateway_cpus or 'any'}; client/fake cpus {a.bench_cpus or 'any'}); scratch {tmp}",
            flush=True,
        )
        res["config"] = {
            "mode": "real upstream" if a.upstream else "fake upstream",
            "upstream": b.up_url,
            "model": a.model,
            "served_model": a.served_model,
            "conc": a.conc_list,
            "rounds": a.rounds,
            "max_tokens": a.max_tokens,
            "think_ms": a.think_ms,
            "request_extra": b.extra,
            "fake": None
            if a.upstream
            else {"ttft_ms": a.ttft_ms, "itl_ms": a.itl_ms, "tokens": a.tokens, "ns_delay_ms": a.ns_delay_ms},
            "gateway_cpus": a.gateway_cpus,
            "gateway_bin": gateway_exe(a),
            "gateway_variant": os.environ.get("OVERHEAD_VARIANT", ""),
            "bench_cpus": a.bench_cpus,
            "restart_gateway_per_phase": a.restart_gateway,
            "client_loop": "uvloop" if a.uvloop else "asyncio (stdlib)",
            "gateway_config": json.loads(b.cfg_path.read_text()),
            "argv": sys.argv[1:],
        }
        t0 = time.perf_counter()
        asyncio.run(run_all(a, b, res))
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["machine"]["loadavg_end"] = os.getloadavg()
        if b.gw is not None and b.gw.poll() is not None:
            print(f"warning: the gateway exited during the run:\n{tail(tmp / 'gateway.log')}", file=sys.stderr)
        res["targets"] = targets(res) if not a.upstream else []
    finally:
        PROCS.stop_all()
        if not a.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    md = markdown(res) if res["streaming"] or res.get("non_streaming") else ""
    print()
    print(md)
    prof = res.get("profile")
    if prof:
        if "error" in prof:
            print(f"\nprofile: {prof['error']}")
        else:
            print(
                f"\nprofile: {prof['samples']} samples, {prof['requests']} requests at {prof['conc']} concurrent, "
                f"gateway CPU {prof['gateway_cpu_ms_per_req']:.3f} ms/req; raw stacks in {prof['raw']}"
            )
            for title, key in (
                ("self time by package", "self_by_package_pct"),
                ("self time by function", "self_by_function_pct"),
                ("inclusive time, gateway/ and router/ functions", "inclusive_ours_pct"),
            ):
                print(f"\n{title}:")
                for name, pc in prof[key][:20]:
                    print(f"  {pc:5.1f}%  {name}")
    sc = res.get("syscalls")
    if sc:
        print(f"\nsyscalls: {sc}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nJSON results: {a.out}")
    if a.md and md:
        Path(a.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        PROCS.stop_all()
