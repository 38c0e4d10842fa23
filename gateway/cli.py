"""``llm-gateway`` command line. Arguments are parsed in :func:`main`, never at import time."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.settings import Settings, SettingsError, load_settings


def _load(path: str) -> Settings | None:
    try:
        return load_settings(path)
    except SettingsError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    return _run_server(settings, args)


def _run_server(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.server import serve

    host = args.host or settings.server.host
    port = args.port or settings.server.port
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call otherwise
    app = create_app(settings)
    print(f"llm-gateway listening on http://{host}:{port}  (OpenAI base URL: http://{host}:{port}/v1)", flush=True)
    # Start-up objects (modules, app, router models) are never freed: keep them out of every collection,
    # and collect the many short-lived per-request objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    serve(
        app,
        settings.server.drain_timeout_s,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=settings.server.log_level,
        access_log=args.access_log,
        proxy_headers=False,
        server_header=False,
    )
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from gateway.auth import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        print("llm-gateway hash-key: expected the API key on standard input", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    print(f"{args.config}: OK ({len(settings.backends)} backends, {len(settings.arms)} arms)")
    return 0


def _local_stack(args: argparse.Namespace) -> int:
    from gateway.launcher import BackendSpec, Launcher, Stopped, home_dir, raise_on_stop_signals

    settings = _load(args.config)
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
        f"==> starting {len(spec.servers)} vLLM-CPU backends (logs in {log_dir}); "
        "Ctrl-C, SIGTERM or SIGHUP stops everything",
        flush=True,
    )
    try:
        with raise_on_stop_signals(), Launcher(spec, log_dir) as launcher:
            launcher.start()
            launcher.wait_ready(timeout_s=args.ready_timeout)
            host, port = args.host or settings.server.host, args.port or settings.server.port
            model = settings.arms[0].model
            print(
                f"""==> gateway on http://{host}:{port}  (OpenAI base URL http://{host}:{port}/v1)
    try:  curl -s http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
            -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}'
          curl -s http://{host}:{port}/v1/models;  curl -s http://{host}:{port}/metrics | grep gateway_""",
                flush=True,
            )
            return _run_server(settings, args)
    except KeyboardInterrupt:
        print("\n==> stopped", file=sys.stderr)
        return 130
    except Stopped as exc:
        print(f"\n==> stopped ({exc})", file=sys.stderr)
        return 128 + exc.signum
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1


def _lab(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from threadpoolctl import threadpool_limits

        from gateway import lab

        # The router's matrices are tiny, and a BLAS spinning threads on every core fights the vLLM
        # servers beside it: `train` on 690 prompts took 5 min 8 s with OpenBLAS's default threads next
        # to the busy local stack, 23 s with one.
        with threadpool_limits(limits=1):
            return int(getattr(lab, name)(args))

    return run


def _profile(args: argparse.Namespace) -> int:
    from gateway.profiling import profile_command

    return profile_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-gateway", description="OpenAI-compatible LLM gateway with a learned router."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="YAML configuration file (GATEWAY_* variables override it)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--access-log", action="store_true", help="log every request (costs CPU under load)")
    serve.set_defaults(func=_serve)
    stack = sub.add_parser(
        "local-stack", help="start local vLLM-CPU backends, then the gateway (Ctrl-C, SIGTERM or SIGHUP stops all)"
    )
    stack.add_argument("--config", default="deploy/local/gateway.yaml")
    stack.add_argument("--backends", default="deploy/local/backends.yaml")
    stack.add_argument(
        "--servers", help="comma-separated backend names to start (default: all in --backends); bring arms up in turns"
    )
    stack.add_argument("--log-dir", help="backend logs (default $LLM_GATEWAY_HOME/logs)")
    stack.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the backends")
    stack.add_argument("--host")
    stack.add_argument("--port", type=int)
    stack.add_argument("--access-log", action="store_true")
    stack.set_defaults(func=_local_stack)
    train = sub.add_parser(
        "train", help="fit the learned router's predictors from profiles and/or logged traffic; write an artifact"
    )
    train.add_argument("--profiles", nargs="+", help="profile JSONL file(s) from `llm-gateway profile`")
    train.add_argument(
        "--from-log", metavar="LOG", help="decision log (routing.decision_log): learn from served requests too"
    )
    train.add_argument(
        "--feedback", metavar="FEEDBACK", help="ratings (feedback.path) joined to --from-log by request id"
    )
    train.add_argument("--out", required=True, help="artifact directory to write")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--folds", type=int, default=5, help="cross-validation folds (grouped by prompt)")
    train.add_argument(
        "--encoder",
        choices=["minilm", "none"],
        default="minilm",
        help="prompt embedding: minilm (about 8 ms CPU per routed request) or none (cheap features only, ~0.1 ms)",
    )
    train.set_defaults(func=_lab("train_command"))
    evaluate = sub.add_parser("evaluate", help="score a router artifact on held-out profiled prompts")
    evaluate.add_argument("--profiles", nargs="+", required=True)
    evaluate.add_argument("--artifact", required=True)
    evaluate.add_argument("--out", required=True, help="directory for evaluation{,-cv}.{json,md,png}")
    evaluate.add_argument(
        "--cv", type=int, default=0, metavar="K", help="also K-fold cross-validate over every profiled prompt"
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(func=_lab("evaluate_command"))
    profile = sub.add_parser("profile", help="measure every arm on offline prompt sets through the gateway (resumable)")
    profile.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    profile.add_argument("--arms", required=True, help="comma-separated arm names")
    profile.add_argument("--tasks", default="gsm8k,mmlu,humaneval,mtbench", help="comma-separated prompt sets")
    profile.add_argument("--per-task", type=int, default=50, help="prompts per task (a fixed sample per seed)")
    profile.add_argument("--split", choices=["all", "train", "test"], default="all")
    profile.add_argument("--seed", type=int, default=0)
    profile.add_argument("--concurrency", type=int, default=4, help="concurrent requests per arm")
    profile.add_argument("--max-tokens", type=int, default=256)
    profile.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    profile.add_argument("--out", required=True, help="JSONL file (appended; finished pairs are skipped)")
    profile.add_argument(
        "--backend-metrics", help="NAME=URL,... of vLLM backends to read spec-decode counters from (optional)"
    )
    profile.set_defaults(func=_profile)
    from gateway.launcher import home_dir
    from gateway.variant import add_parser as add_make_variant

    add_make_variant(sub, home_dir() / "vllm-venv" / "bin" / "python")
    hash_cmd = sub.add_parser(
        "hash-key", help="print the SHA-256 of an API key read from stdin, for auth.keys[].sha256"
    )
    hash_cmd.set_defaults(func=_hash_key)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
