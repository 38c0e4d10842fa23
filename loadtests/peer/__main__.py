"""Command line of the peer comparison (``python -m loadtests.peer``); see :mod:`loadtests.peer`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.kit.client import Target
from loadtests.kit.cpu import machine_busy_s
from loadtests.kit.procs import PROCS, NotReady, start_fake
from loadtests.kit.report import machine, versions, write

from . import __doc__ as ABOUT
from .bench import measure_peer, n_streams
from .peers import PEERS, Ctx, Unavailable, ours_variant, peer_custom
from .report import chart, markdown

DEFAULT_PEERS = "tcp,vllm-router,litellm,ours,ours-auto"
FAKE_ENV = ("FAKE_TTFT_MS", "FAKE_ITL_MS", "FAKE_TOKENS")


# Long by design: a declarative table of the command-line options; splitting it would only scatter them.
def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.peer",
        description=(ABOUT or "").split("\n\n")[0],
        epilog=(ABOUT or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = ap.add_argument_group("peers")
    g.add_argument(
        "--only",
        default=DEFAULT_PEERS,
        help=f"comma-separated peers to measure, in this order (built in: {', '.join(PEERS)}; ours and "
        "ours-auto take options after colons: granian or uvicorn (the HTTP server), lean or aiohttp (the upstream "
        "client), wN (N worker processes), "
        f"e.g. ours-auto:granian:w2; plus --gateway-name with --gateway-cmd; default {DEFAULT_PEERS})",
    )
    g.add_argument(
        "--peer-home",
        default=env.get("PEER_HOME", "~/.cache/llm-gateway/peers"),
        help="where loadtests/peer/install_peers.sh put the vllm-router and litellm venvs "
        "(default $PEER_HOME or ~/.cache/llm-gateway/peers)",
    )
    g.add_argument("--install", action="store_true", help="run install_peers.sh first for the selected PyPI peers")
    g.add_argument(
        "--gateway-ref",
        metavar="REV",
        help="ours/ours-auto run the gateway/ and router/ of this git revision (git archive) instead of the "
        "working tree's",
    )
    g.add_argument(
        "--artifact",
        default="router/artifacts/local",
        help="learned router artifact of ours-auto (relative: to the repository, or to the --gateway-ref snapshot)",
    )
    g.add_argument("--gateway-log-level", default="info", help="ours/ours-auto server.log_level (default info)")
    w = ap.add_argument_group("workload")
    w.add_argument("--rounds", type=int, default=3, help="interleaved direct/via rounds per phase (default 3)")
    w.add_argument("--conc", default="16,64", help="streaming concurrencies, comma separated (default 16,64)")
    w.add_argument("--n", type=int, help="streaming requests per round and side (default max(256, 16 x conc))")
    w.add_argument(
        "--ns-requests",
        type=int,
        default=1280,
        help="non-streaming requests per round and side (default 1280; 0 skips the phase)",
    )
    w.add_argument("--ns-conc", type=int, default=64, help="non-streaming concurrency (default 64)")
    w.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: --tokens)")
    f = ap.add_argument_group("fake upstream (loadtests/fake_upstream.py)")
    f.add_argument(
        "--ttft-ms",
        type=float,
        default=float(env.get("FAKE_TTFT_MS", 20)),
        help="time to the first token (default $FAKE_TTFT_MS or 20)",
    )
    f.add_argument(
        "--itl-ms",
        type=float,
        default=float(env.get("FAKE_ITL_MS", 2)),
        help="time between tokens (default $FAKE_ITL_MS or 2)",
    )
    f.add_argument(
        "--tokens",
        type=int,
        default=int(env.get("FAKE_TOKENS", 16)),
        help="tokens per answer (default $FAKE_TOKENS or 16)",
    )
    f.add_argument(
        "--ns-delay-ms",
        type=float,
        help="delay of a non-streamed answer (default TTFT + ITL x tokens, as a server that generated it)",
    )
    f.add_argument("--served-model", default="smol-served", help="the fake's model name (default smol-served)")
    q = ap.add_argument_group("quiet machine")
    q.add_argument(
        "--max-foreign",
        type=float,
        default=0.3,
        help="measure a peer again when some phase saw more foreign CPU than this, in cores; of its measurements "
        "the one with the least foreign CPU (time-weighted mean over its phases) is reported (default 0.3)",
    )
    q.add_argument("--retries", type=int, default=2, help="at most this many extra measurements per peer (default 2)")
    q.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for the machine's busy CPU (3 s samples) to fall "
        "under --max-foreign (default 0: do not wait)",
    )
    q.add_argument(
        "--settle-s",
        type=float,
        default=3.0,
        help="seconds to wait after starting a peer, and before a retry (default 3)",
    )
    c = ap.add_argument_group("any other OpenAI-compatible gateway (a custom peer)")
    c.add_argument(
        "--gateway-cmd",
        help="shell command starting it in the foreground; tokens replaced first: {port} a free port, {upstream} "
        "the fake's base URL, {upstream_v1} the same + /v1, {upstream_port}, {served_model}, {tmp} a scratch "
        "folder, {config} where --gateway-config was written",
    )
    c.add_argument("--gateway-config", help="a config template written to {config}, tokens replaced as plain text")
    c.add_argument("--gateway-url", default="http://127.0.0.1:{port}", help="its base URL (tokens as above)")
    c.add_argument("--gateway-name", default="custom", help="its row name (default custom)")
    c.add_argument("--gateway-health", default="/health", help="readiness path, any status < 500 (default /health)")
    c.add_argument("--gateway-version", default="", help="its version, for the table")
    c.add_argument("--gateway-timeout", type=float, default=120, help="seconds to wait for readiness (default 120)")
    c.add_argument("--model", help="the model name to send through it (default: the served model)")
    c.add_argument("--api-key", default="", help="sent as 'authorization: Bearer KEY' to it")
    o = ap.add_argument_group("output")
    o.add_argument(
        "--out",
        default="loadtests/results/peer-overhead",
        help="results stem: writes STEM.json, STEM.md and STEM.png (default loadtests/results/peer-overhead)",
    )
    o.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder (configs, logs)")
    o.add_argument(
        "--from-json",
        metavar="FILE",
        help="measure nothing: redraw the markdown and the chart of an earlier run's JSON results beside it",
    )
    return ap


def command_line(argv: list[str]) -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in FAKE_ENV if k in os.environ)
    cmd = " ".join(shlex.quote(x) for x in [".venv/bin/python", "-m", "loadtests.peer", *argv])
    return f"{env} {cmd}".strip()


def install(names: list[str]) -> None:
    wanted = [n for n in names if n in ("vllm-router", "litellm")]
    if wanted:
        script = Path(__file__).with_name("install_peers.sh")
        subprocess.run(["bash", str(script), *wanted], check=False)  # prints its own progress


async def wait_quiet(limit_s: float, max_cores: float) -> float:
    """Wait until the machine's busy CPU over 3 s is at most ``max_cores`` (or ``limit_s`` passed); the
    seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        b0, w0 = machine_busy_s(), time.monotonic()
        await asyncio.sleep(3.0)
        if (machine_busy_s() - b0) / (time.monotonic() - w0) <= max_cores:
            break
    return round(time.monotonic() - t0, 1)


async def run_peer(ctx: Ctx, name: str, start: Any, direct: Target, fake_pid: int, a: argparse.Namespace) -> dict:
    """Start, measure (again while the machine was busy, keeping the quietest), stop one peer."""
    row: dict[str, Any] = {"name": name}
    history: list[float] = []
    tries: list[dict[str, Any]] = []
    for attempt in range(1 + a.retries):
        if a.wait_quiet > 0:
            waited = await wait_quiet(a.wait_quiet, a.max_foreign)
            row["waited_quiet_s"] = row.get("waited_quiet_s", 0.0) + waited
            print(f"   waited {waited:.0f} s for a quiet machine", flush=True)
        peer = start(ctx)
        row.update(version=peer.version, note=peer.note)
        try:
            await asyncio.sleep(a.settle_s)
            m = await measure_peer(peer, direct, fake_pid, a)
        finally:
            PROCS.stop(peer.proc)
        history.append(round(m["foreign_cpu_mean"], 2))
        tries.append(m)
        if m["foreign_cpu_max"] <= a.max_foreign:
            break
        if attempt < a.retries:
            print(
                f"   foreign CPU {m['foreign_cpu_max']:.2f} cores > {a.max_foreign}: measuring {name} again", flush=True
            )
    best = min(tries, key=lambda t: t["foreign_cpu_mean"])  # the least disturbed, over the whole measurement
    row.update(m=best, attempts=len(tries), foreign_history=history, others=[t for t in tries if t is not best])
    return row


async def run_all(a: argparse.Namespace, ctx: Ctx, names: list[str], fake_pid: int, res: dict[str, Any]) -> None:
    starts = {**PEERS, **({a.gateway_name: peer_custom} if a.gateway_cmd else {})}
    starts.update({n: v for n in names if (v := ours_variant(n)) is not None})
    direct = Target("direct", ctx.upstream, ctx.served_model, {}, a.max_tokens)
    for name in names:
        print(f"== {name}", flush=True)
        try:
            res["rows"].append(await run_peer(ctx, name, starts[name], direct, fake_pid, a))
        except Unavailable as e:
            print(f"   could not run: {e}", flush=True)
            res["rows"].append({"name": name, "error": str(e).replace("|", "/")[:400]})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.from_json:
        stem = Path(a.from_json).with_suffix("")
        report(json.loads(Path(a.from_json).read_text()), stem, write_json=False)
        return 0
    a.conc_list = [int(x) for x in a.conc.split(",") if x.strip()]
    a.max_tokens = a.max_tokens or a.tokens
    if a.ns_delay_ms is None:
        a.ns_delay_ms = a.ttft_ms + a.itl_ms * a.tokens
    known = [*PEERS, *([a.gateway_name] if a.gateway_cmd else [])]
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    if a.gateway_cmd and a.gateway_name not in names and a.only == DEFAULT_PEERS:
        names.append(a.gateway_name)
    unknown = [n for n in names if n not in known and ours_variant(n) is None]
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; known: {known}")
    if a.install:
        install(names)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="peer-"))
    res: dict[str, Any] = {"command": command_line(argv), "machine": machine(), "versions": versions(), "rows": []}
    try:
        try:
            up, fake = start_fake(
                tmp,
                served_model=a.served_model,
                ttft_ms=a.ttft_ms,
                itl_ms=a.itl_ms,
                tokens=a.tokens,
                ns_delay_ms=a.ns_delay_ms,
            )
        except NotReady as e:
            raise SystemExit(str(e)) from None
        res["config"] = {
            "peers": names,
            "conc": a.conc_list,
            "n_per_conc": {c: n_streams(c, a) for c in a.conc_list},
            "rounds": a.rounds,
            "ns_requests": a.ns_requests,
            "ns_conc": a.ns_conc,
            "max_tokens": a.max_tokens,
            "fake": {"ttft_ms": a.ttft_ms, "itl_ms": a.itl_ms, "tokens": a.tokens, "ns_delay_ms": a.ns_delay_ms},
            "max_foreign_cores": a.max_foreign,
            "gateway_ref": a.gateway_ref,
        }
        print(f"fake upstream {up} (pid {fake.pid}); scratch {tmp}", flush=True)
        t0 = time.perf_counter()
        asyncio.run(run_all(a, Ctx(tmp, up, a.served_model, a), names, fake.pid, res))
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["machine"]["loadavg_end"] = os.getloadavg()
    finally:
        PROCS.stop_all()
        if not a.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    report(res, Path(a.out))
    return 0


def report(res: dict[str, Any], stem: Path, write_json: bool = True) -> None:
    """Print the markdown; write STEM.png, STEM.md and (``write_json``) STEM.json."""
    why = chart(res, stem.with_suffix(".png"))
    md = markdown(res)
    md += f"\n\n![peer comparison]({stem.with_suffix('.png').name})" if why is None else f"\n\n(no chart: {why})"
    print()
    print(md)
    write(res if write_json else {}, stem.with_suffix(".json") if write_json else None, md, stem.with_suffix(".md"))


if __name__ == "__main__":
    sys.exit(main())
