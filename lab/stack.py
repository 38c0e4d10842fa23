"""``llm-gateway local-stack``: start the local vLLM-CPU backends (:mod:`lab.launcher`), wait for them,
then serve the gateway in this process; however it stops, the backends stop with it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.cli import load_config, run_server
from lab.launcher import BackendSpec, Launcher, Stopped, home_dir, raise_on_stop_signals


def _banner(host: str, port: int, model: str) -> str:
    return f"""==> gateway on http://{host}:{port}  (OpenAI base URL http://{host}:{port}/v1)
    try:  curl -s http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
            -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}'
          curl -s http://{host}:{port}/v1/models;  curl -s http://{host}:{port}/metrics | grep gateway_"""


def local_stack_command(args: argparse.Namespace) -> int:
    """Entry point: the gateway's exit status, 1 if the backends fail to start, 2 for bad input,
    130 on Ctrl-C, 128 + the signal on SIGTERM/SIGHUP."""
    settings = load_config(args.config)
    if settings is None:
        return 2
    spec = BackendSpec.load(args.backends)
    if args.servers:
        try:
            spec = spec.only(args.servers.split(","))
        except ValueError as exc:
            print(f"llm-gateway: {exc}", file=sys.stderr)
            return 2
    log_dir = Path(args.log_dir) if args.log_dir else home_dir() / "logs"
    print(
        f"==> starting {len(spec.servers)} backend servers (logs in {log_dir}); "
        "Ctrl-C, SIGTERM or SIGHUP stops everything",
        flush=True,
    )
    try:
        with raise_on_stop_signals(), Launcher(spec, log_dir) as launcher:
            launcher.start()
            launcher.wait_ready(timeout_s=args.ready_timeout)
            host, port = args.host or settings.server.host, args.port or settings.server.port
            print(_banner(host, port, settings.arms[0].model), flush=True)
            return run_server(settings, host=host, port=port, access_log=args.access_log)
    except KeyboardInterrupt:
        print("\n==> stopped", file=sys.stderr)
        return 130
    except Stopped as exc:
        print(f"\n==> stopped ({exc})", file=sys.stderr)
        return 128 + exc.signum
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
