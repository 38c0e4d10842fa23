"""The peers: how each gateway is started in front of the fake upstream, registered by name.

A factory takes the run's :class:`Ctx` and returns a started, ready :class:`Peer`, or raises
:class:`Unavailable` with the reason (not installed, exited, no answer). Every process is started
through :data:`loadtests.kit.procs.PROCS` in its own process group and stopped by it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.kit.gateway import describe, snapshot, start_gateway
from loadtests.kit.procs import PROCS, REPO, NotReady, free_port, wait_http

INSTALL = "loadtests/peer/install_peers.sh"


class Unavailable(Exception):
    """A peer that cannot run here; the message says exactly why."""


@dataclass
class Ctx:
    """What a peer factory gets: a scratch folder, the fake upstream's base URL and served model name,
    and the command line."""

    tmp: Path
    upstream: str
    served_model: str
    args: argparse.Namespace


@dataclass
class Peer:
    """A started peer: its process (group leader), base URL, the model name to send through it, its
    version, a note on how it was configured, and headers every request carries (an API key)."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    model: str
    version: str
    note: str
    headers: dict[str, str] = field(default_factory=dict)


def launch(
    ctx: Ctx, name: str, cmd: list[str] | str, url: str, health: str, timeout: float, env: dict[str, str | None]
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (log in the scratch folder; ``env`` entries set to None are removed) and wait until
    ``url + health`` answers with any status below 500."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    log = ctx.tmp / f"{name}.log"
    p = PROCS.start(cmd, log, env=full, cwd=str(ctx.tmp))
    try:
        wait_http(url + health, timeout, p, log, ok=())
    except NotReady as e:
        PROCS.stop(p)
        raise Unavailable(" ".join(str(e).split())[-400:]) from None
    return p


def venv_of(ctx: Ctx, name: str, exe: str) -> Path:
    """The peer's venv (``--peer-home``/NAME), or :class:`Unavailable` naming the install command."""
    v = Path(ctx.args.peer_home).expanduser() / name
    if not (v / "bin" / exe).exists():
        raise Unavailable(f"not installed in {v}: run {INSTALL} {name}")
    return v


def dist_version(venv: Path, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def peer_tcp(ctx: Ctx) -> Peer:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = ctx.upstream.split("://", 1)[1]
    cmd = [sys.executable, str(Path(__file__).with_name("tcp_hop.py")), str(port), up]  # stdlib only
    p = launch(ctx, "tcp", cmd, url, "/health", 15, {})
    note = "bare byte forwarding, one upstream connection per client connection"
    return Peer("tcp", p, url, ctx.served_model, f"python {platform.python_version()} asyncio", note)


def peer_vllm_router(ctx: Ctx) -> Peer:
    v = venv_of(ctx, "vllm-router", "vllm-router")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(v / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--worker-urls", ctx.upstream, "--policy", "round_robin"]
    cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    p = launch(ctx, "vllm-router", cmd, url, "/health", 120, {})
    note = "Rust (a Python launcher execs the compiled router), the fake as its one worker, round_robin, log level info"
    return Peer("vllm-router", p, url, ctx.served_model, dist_version(v, "vllm-router"), note)


def peer_litellm(ctx: Ctx) -> Peer:
    v = venv_of(ctx, "litellm", "litellm")
    port = free_port()
    key = "sk-" + secrets.token_hex(24)  # the proxy refuses to start without a master key
    cfg = ctx.tmp / "litellm.yaml"
    params = {"model": f"openai/{ctx.served_model}", "api_base": ctx.upstream + "/v1", "api_key": "x"}
    doc = {"model_list": [{"model_name": "smol", "litellm_params": params}], "general_settings": {"master_key": key}}
    cfg.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    env: dict[str, str | None] = {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "DATABASE_URL": None,
    }
    url = f"http://127.0.0.1:{port}"
    cmd = [str(v / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    p = launch(ctx, "litellm", cmd, url, "/health/liveliness", 240, env)
    note = "uvicorn, 1 worker (default), no database, master key, telemetry off, local cost map, default logging"
    return Peer("litellm", p, url, "smol", dist_version(v, "litellm"), note, {"authorization": f"Bearer {key}"})


def _ours(ctx: Ctx, name: str, routed: bool, server: dict[str, Any] | None = None) -> Peer:
    a = ctx.args
    server = server or {}
    source = snapshot(a.gateway_ref, ctx.tmp) if a.gateway_ref else None
    artifact = None
    if routed:
        artifact = Path(a.artifact)
        if not artifact.is_absolute():
            artifact = (source or REPO) / artifact
    try:
        url, p, _ = start_gateway(
            ctx.tmp,
            ctx.upstream,
            model="smol",
            served_model=ctx.served_model,
            routed=str(artifact) if artifact else None,
            log_level=a.gateway_log_level,
            name=name.replace(":", "-"),
            source=source,
            server=server,
        )
    except NotReady as e:
        raise Unavailable(" ".join(str(e).split())[-400:]) from None
    how = f"learned policy, {a.artifact}, request model 'auto'" if routed else "one plain arm, model pinned"
    http = server.get("http_server", "uvicorn")
    how_served = "uvicorn, uvloop, httptools" if http == "uvicorn" else "granian embedded, uvloop"
    how_served += ", lean upstream client" if server.get("upstream_client") == "lean" else ""
    workers = server.get("workers", 1)
    how_served += f", {workers} workers (SO_REUSEPORT)" if workers > 1 else ""
    note = f"llm-gateway serve ({how_served}), {how}, log level {a.gateway_log_level}"
    return Peer(name, p, url, "auto" if routed else "smol", describe(a.gateway_ref), note)


def peer_ours(ctx: Ctx) -> Peer:
    return _ours(ctx, "ours", routed=False)


def peer_ours_auto(ctx: Ctx) -> Peer:
    return _ours(ctx, "ours-auto", routed=True)


def ours_variant(name: str) -> Callable[[Ctx], Peer] | None:
    """``ours`` or ``ours-auto`` with options after colons: ``granian`` / ``uvicorn`` (the HTTP server),
    ``lean`` / ``aiohttp`` (the upstream client), ``wN`` (N worker processes), e.g. ``ours-auto:lean:w2``;
    ``None`` for any other name."""
    base, *opts = name.split(":")
    if base not in ("ours", "ours-auto") or not opts:
        return None
    server: dict[str, Any] = {}
    for opt in opts:
        if opt in ("uvicorn", "granian"):
            server["http_server"] = opt
        elif opt in ("aiohttp", "lean"):
            server["upstream_client"] = opt
        elif opt[:1] == "w" and opt[1:].isdigit() and int(opt[1:]) >= 1:
            server["workers"] = int(opt[1:])
        else:
            return None
    return lambda ctx: _ours(ctx, name, routed=base == "ours-auto", server=server)


def replace_tokens(s: str, tok: dict[str, object]) -> str:
    for k, v in tok.items():
        s = s.replace("{" + k + "}", str(v))
    return s


def peer_custom(ctx: Ctx) -> Peer:
    """Any OpenAI-compatible gateway: ``--gateway-cmd`` with tokens replaced (see ``--help``)."""
    a = ctx.args
    port = free_port()
    conf = ctx.tmp / f"{a.gateway_name}.config"
    tok: dict[str, object] = {
        "port": port,
        "upstream": ctx.upstream,
        "upstream_v1": ctx.upstream + "/v1",
        "upstream_port": ctx.upstream.rsplit(":", 1)[1],
        "served_model": ctx.served_model,
        "tmp": ctx.tmp,
        "config": conf,
    }
    if a.gateway_config:
        conf.write_text(replace_tokens(Path(a.gateway_config).read_text(), tok))
    url = replace_tokens(a.gateway_url, tok).rstrip("/")
    cmd = replace_tokens(a.gateway_cmd, tok)
    p = launch(ctx, a.gateway_name, cmd, url, a.gateway_health, a.gateway_timeout, {})
    headers = {"authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    return Peer(a.gateway_name, p, url, a.model or ctx.served_model, a.gateway_version or "?", "--gateway-cmd", headers)


PEERS: dict[str, Callable[[Ctx], Peer]] = {
    "tcp": peer_tcp,
    "vllm-router": peer_vllm_router,
    "litellm": peer_litellm,
    "ours": peer_ours,
    "ours-auto": peer_ours_auto,
}
