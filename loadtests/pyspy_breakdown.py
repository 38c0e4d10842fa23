"""Where did the gateway's CPU go? Buckets py-spy's raw (collapsed) stacks by stage of a request.

Input: ``py-spy record --format raw`` output of the gateway under load — best with ``--native``
(complete, consistent stacks; ``overhead.py --profile-native`` writes one beside ``--out``).
Each sample goes to the first bucket whose rule matches its stack; with ``--cpu-ms-per-req`` the
shares are also turned into CPU ms per request. Standard library only.

  python loadtests/pyspy_breakdown.py loadtests/results/profile-native-c16.pyspy.txt --cpu-ms-per-req 1.9
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections import Counter

# (bucket, rule): a rule is a function of the stack's frame names (root first)
RULES: list[tuple[str, object]] = []


def rule(name: str):  # type: ignore[no-untyped-def]
    def wrap(fn):  # type: ignore[no-untyped-def]
        RULES.append((name, fn))
        return fn

    return wrap


def has(frames: list[str], *needles: str) -> bool:
    return any(n in f for f in frames for n in needles)


def after(frames: list[str], first: str, *needles: str) -> bool:
    """Some needle occurs in a frame below (called from) the first frame containing ``first``."""
    for i, f in enumerate(frames):
        if first in f:
            return has(frames[i + 1 :], *needles)
    return False


@rule("garbage collector (gc_collect)")
def _gc(fr: list[str]) -> bool:
    return has(fr, "gc_collect")


@rule("upstream request: httpx send, pool checkout, write, wait for headers (Proxy._send)")
def _send(fr: list[str]) -> bool:
    return has(fr, "Proxy._send")


@rule("upstream response close: httpx/httpcore aclose + pool bookkeeping")
def _close(fr: list[str]) -> bool:
    return (has(fr, "RelayResponse._relay", "RelayResponse.__call__")) and has(
        fr, "Response.aclose", "PoolByteStream.aclose", "_response_closed"
    )


@rule("non-streaming: upstream body read + close, model rewrite, usage (Proxy._complete)")
def _complete(fr: list[str]) -> bool:
    return has(fr, "Proxy._complete")


@rule("upstream body reads: httpx aiter_raw -> httpcore -> h11 -> anyio")
def _reads(fr: list[str]) -> bool:
    return after(fr, "RelayResponse._relay", "aiter_raw")


@rule("downstream writes: uvicorn send() per SSE chunk (incl. write syscall)")
def _writes(fr: list[str]) -> bool:
    return after(fr, "RelayResponse._relay", "RequestResponseCycle.send", "_send (")


@rule("SSE event processing in the relay (ours: split, replace, token timestamps)")
def _process(fr: list[str]) -> bool:
    return has(fr, "RelayResponse._process", "_is_token_event")


@rule("relay loop, other (ours + buffers)")
def _relay_other(fr: list[str]) -> bool:
    return has(fr, "RelayResponse._relay")


@rule("disconnect watcher (receive() until http.disconnect)")
def _watch(fr: list[str]) -> bool:
    return has(fr, "_watch_disconnect")


@rule("relay set-up/tear-down: tasks, asyncio.wait, on_done metrics")
def _call(fr: list[str]) -> bool:
    return has(fr, "RelayResponse.__call__", "Proxy._relay")


@rule("request body read, pydantic validation, routing decision (ours)")
def _route(fr: list[str]) -> bool:
    return has(fr, "Proxy._read_body", "Proxy._route", "Proxy._decide", "Proxy._flags")


@rule("handler, other (ours: Proxy.handle/_forward, metrics)")
def _handler(fr: list[str]) -> bool:
    return has(fr, "Proxy.handle", "Proxy._forward", "chat_completions (gateway", "GatewayMetrics")


@rule("FastAPI/Starlette: routing, middleware, Request objects")
def _framework(fr: list[str]) -> bool:
    return has(fr, "(fastapi/", "(starlette/")


@rule("uvicorn HTTP protocol: httptools parsing, ASGI cycle, transport")
def _uvicorn(fr: list[str]) -> bool:
    return has(fr, "(uvicorn/protocols", "httptools")


@rule("health checks of the upstream (BackendPool)")
def _health(fr: list[str]) -> bool:
    return has(fr, "BackendPool")


@rule("event loop and kernel, no Python frame (epoll, timers, socket syscalls)")
def _loop(fr: list[str]) -> bool:
    return True


def leaf_native(frames: list[str]) -> str:
    return frames[-1].split(" (")[0] if frames else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", help="py-spy --format raw output (.gz is read too)")
    ap.add_argument("--cpu-ms-per-req", type=float, help="gateway CPU ms per request measured in the same run")
    ap.add_argument("--leaves", type=int, default=12, help="also list the top self-time leaves (any frame kind)")
    ap.add_argument(
        "--keep-epoll",
        action="store_true",
        help="keep samples whose leaf is epoll_wait/epoll_pwait (by default dropped: with --native, py-spy counts "
        "some of the loop's idle waiting as active, which dominates at low load)",
    )
    a = ap.parse_args(argv)
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    syscalls: Counter[str] = Counter()
    total = dropped = 0
    opener = gzip.open if a.raw.endswith(".gz") else open
    with opener(a.raw, "rt", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            frames = stack.split(";")
            if not a.keep_epoll and frames[-1].startswith(("epoll_pwait ", "epoll_wait ")):
                dropped += c
                continue
            total += c
            for name, fn in RULES:
                if fn(frames):  # type: ignore[operator]
                    buckets[name] += c
                    break
            leaf = frames[-1]
            leaves[leaf.rsplit(":", 1)[0] + ")" if ".py:" in leaf else leaf] += c
            if "(libc" in leaf:
                syscalls[leaf_native(frames)] += c
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    per = a.cpu_ms_per_req
    print(
        f"{total} samples"
        + (f" ({dropped} more in epoll_wait dropped)" if dropped else "")
        + (f"; {per:.3f} CPU ms per request" if per else "")
    )
    print()
    print("| stage | share | CPU ms / req |" if per else "| stage | share |")
    print("|---|---|---|" if per else "|---|---|")
    for name, c in buckets.most_common():
        share = c / total
        print(f"| {name} | {100 * share:.1f}% |" + (f" {share * per:.3f} |" if per else ""))
    print()
    print(
        "libc leaves (syscalls and friends), share of all samples: "
        + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in syscalls.most_common(8))
    )
    print()
    print("top self-time leaves:")
    for k, v in leaves.most_common(a.leaves):
        print(f"  {100 * v / total:5.1f}%  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
