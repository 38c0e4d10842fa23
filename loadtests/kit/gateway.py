"""Our gateway exactly as deployed: ``llm-gateway serve --config <generated>`` (uvicorn, uvloop,
httptools) in front of one upstream, either one plain arm with a pinned model name or, with a learned
router artifact, one arm per artifact arm (all on the same upstream) and the learned policy, so that
requests naming ``model: "auto"`` are featurized and decided. The gateway runs from the working tree,
or from a git revision extracted with :func:`snapshot` (to measure before and after a change in one run)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from .procs import PROCS, REPO, free_port, wait_http


def gateway_exe(gateway_bin: str | None = None, fallback: bool = False) -> str:
    """The ``llm-gateway`` executable: ``gateway_bin``, else beside this Python, else .venv/bin, else PATH;
    none: with ``fallback`` the empty string (run ``python -m gateway`` from the repository), else exit."""
    if gateway_bin:
        return str(Path(gateway_bin).resolve()) if "/" in gateway_bin else gateway_bin
    for cand in (Path(sys.executable).parent / "llm-gateway", REPO / ".venv" / "bin" / "llm-gateway"):
        if cand.exists():
            return str(cand)
    found = shutil.which("llm-gateway")
    if not found and not fallback:
        raise SystemExit("llm-gateway not found; pass --gateway-bin (e.g. .venv/bin/llm-gateway)")
    return found or ""


def snapshot(ref: str, dest: Path) -> Path:
    """Extract the ``gateway/`` and ``router/`` packages at git revision ``ref`` into ``dest/src-<ref>``
    (``git archive``); run with ``python -m gateway`` from that folder, its own packages come first on
    sys.path, before the project's editable install. Returns the folder."""
    out = dest / ("src-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in ref))
    if out.exists():
        return out
    tar = subprocess.run(["git", "archive", ref, "gateway", "router"], cwd=REPO, capture_output=True, check=False)
    if tar.returncode:
        raise SystemExit(f"git archive {ref} failed: {tar.stderr.decode(errors='replace').strip()}")
    out.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(out, filter="data")
    return out


def describe(ref: str | None = None) -> str:
    """``ref`` (or HEAD) as a short commit, marked when gateway/ or router/ differ from HEAD in the tree."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", ref or "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    if ref:
        return f"{rev} ({ref})" if rev and rev != ref else (rev or ref)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "gateway", "router"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    return (rev or "?") + (" + working tree" if dirty else "")


def gateway_config(
    port: int,
    upstream: str,
    model: str,
    served_model: str,
    routed: str | None = None,
    log_level: str = "info",
    server: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A gateway config on 127.0.0.1:``port`` with the one backend ``upstream`` serving ``served_model``.
    Without ``routed``: one plain arm published as ``model``. With ``routed`` (a learned router artifact
    folder): one plain arm per arm in its ``router.json``, all published as ``model``, learned policy.
    ``server``: more ``server`` settings (``http_server``, ``workers``)."""
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": log_level, **(server or {})},
        "backends": [{"name": "bench-upstream", "url": upstream, "served_model": served_model}],
        "arms": [
            {"name": "bench-plain", "model": model, "backends": ["bench-upstream"], "strategy": {"kind": "plain"}}
        ],
    }
    if routed:
        artifact = Path(routed).resolve()
        arms = json.loads((artifact / "router.json").read_text())["arms"]
        cfg["arms"] = [
            {"name": n, "model": model, "backends": ["bench-upstream"], "strategy": {"kind": "plain"}} for n in arms
        ]
        cfg["routing"] = {"policy": "learned", "params": {"artifact": str(artifact)}}
    return cfg


def start_gateway(
    tmp: Path,
    upstream: str,
    *,
    model: str,
    served_model: str,
    routed: str | None = None,
    log_level: str = "info",
    gateway_bin: str | None = None,
    cpus: str = "",
    name: str = "gateway",
    source: Path | None = None,
    server: dict[str, Any] | None = None,
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """Write the :func:`gateway_config` to ``tmp/<name>.yaml``, start the gateway (pinned with ``taskset``
    to ``cpus`` when given; taskset execs, so the pid is the gateway's) and wait for ``/ready``.
    ``source``: a :func:`snapshot` folder to run ``python -m gateway`` from instead of ``llm-gateway``.
    Without an ``llm-gateway`` executable, or with ``LOADTESTS_GATEWAY_AS_MODULE=1`` in the environment,
    ``python -m gateway`` on this Python with the repository on ``PYTHONPATH``.
    ``server``: more ``server`` settings (``http_server``, ``workers``). Returns (base URL, process, config path)."""
    port = free_port()
    path = tmp / f"{name}.yaml"
    cfg = gateway_config(port, upstream, model, served_model, routed, log_level, server)
    path.write_text(json.dumps(cfg, indent=1) + "\n")  # JSON is YAML
    env = None
    as_module = source is not None or os.environ.get("LOADTESTS_GATEWAY_AS_MODULE") == "1"
    exe = "" if as_module else gateway_exe(gateway_bin, fallback=True)
    if not exe:
        cmd = [sys.executable, "-m", "gateway"]
        if source is None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    else:
        cmd = [sys.executable, exe] if exe.endswith(".py") else [exe]  # a .py launcher runs on this Python
    cmd += ["serve", "--config", str(path)]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    log = tmp / f"{name}.log"
    p = PROCS.start(cmd, log, cwd=str(source or tmp), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready", 60, p, log)
    return url, p, path
