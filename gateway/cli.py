"""``llm-gateway`` command line. Arguments are parsed in :func:`main`, never at import time."""

from __future__ import annotations

import argparse
import logging
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call otherwise
    app = create_app(settings)
    print(f"llm-gateway listening on http://{host}:{port}  (OpenAI base URL: http://{host}:{port}/v1)", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.server.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=int(settings.server.drain_timeout_s),
        proxy_headers=False,
        server_header=False,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from gateway.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK ({len(settings.backends)} backends, {len(settings.arms)} arms)")
    return 0


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
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
