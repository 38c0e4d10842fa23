"""``llm-gateway`` command line. Arguments are parsed in :func:`main`, never at import time.

The gateway's own commands are ``serve``, ``check-config`` and ``hash-key``. Other packages add
commands through entry points in the group :data:`COMMANDS_GROUP` (the entry point's name is the
command, its object a :class:`Command`): the lab's ``profile``, ``train``, ``evaluate``,
``local-stack``, ``make-variant`` and ``heal-variant`` come that way (``pyproject.toml``). They are
looked up only when the command line names something other than the gateway's own commands, and a
command whose package is not installed answers with the extra to install.
"""

from __future__ import annotations

import argparse
import gc
import getpass
import os
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from typing import Protocol

from gateway.settings import Settings, SettingsError, load_settings

COMMANDS_GROUP = "llm_gateway.commands"
BUILTIN = ("serve", "check-config", "hash-key")
EPILOG = """examples:
  llm-gateway serve --config deploy/local/gateway.yaml
  GATEWAY_CONFIG=gateway.yaml GATEWAY_SERVER__PORT=9000 llm-gateway serve
  llm-gateway check-config --config gateway.yaml
  llm-gateway hash-key            (prompts for the key; or: echo "$KEY" | llm-gateway hash-key)
  llm-gateway <command> --help    (every option, with its default)"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, descriptions and epilogs as written."""


def _version() -> str:
    try:
        return version("llm-gateway")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class Command(Protocol):
    """A command registered under :data:`COMMANDS_GROUP`. ``help``: one line for ``--help``;
    ``add_arguments``: adds its options to its subparser; ``run``: does the work, returns the exit status.
    Loading the object must stay cheap (argparse only): heavy imports belong in ``run``."""

    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def load_config(path: str) -> Settings | None:
    """The settings in ``path`` (``GATEWAY_*`` variables applied); ``None`` after printing why not."""
    try:
        return load_settings(path)
    except SettingsError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    overrides = {
        k: v
        for k, v in (("log_format", args.log_format), ("http_server", args.server), ("workers", args.workers))
        if v is not None
    }
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    return run_server(settings, host=args.host, port=args.port, access_log=args.access_log)


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"--workers: expected a whole number from 1 to 256, got {value!r}")
    return n


def _settings(args: argparse.Namespace) -> Settings | None:
    """The settings of ``--config`` (default ``$GATEWAY_CONFIG``); ``None`` after printing why not."""
    if args.config is None:
        print(f"llm-gateway {args.command}: give --config FILE or set GATEWAY_CONFIG", file=sys.stderr)
        return None
    return load_config(args.config)


def run_server(
    settings: Settings, *, host: str | None = None, port: int | None = None, access_log: bool = False
) -> int:
    """Serve the gateway until it is stopped (SIGTERM drains); ``host``/``port`` override ``settings.server``."""
    from gateway import logs
    from gateway.server import missing_http_server

    host = host or settings.server.host
    port = port or settings.server.port
    server = settings.server
    logs.configure(server.log_level, server.log_format)
    if why := missing_http_server(server.http_server):
        print(f"llm-gateway: {why}", file=sys.stderr)
        return 2
    if server.workers > 1:
        from gateway.workers import run_workers

        if _check_policy(settings) != 0:  # fail before forking, once
            return 2
        print(f"llm-gateway: {server.workers} workers ({server.http_server}) on {host}:{port}", flush=True)
        return run_workers(
            settings, server.workers, lambda index: _serve_app(settings, host, port, access_log, reuse_port=True)
        )
    return _serve_app(settings, host, port, access_log, reuse_port=False)


def _check_policy(settings: Settings) -> int:
    from gateway.arms import ArmCatalog

    try:
        settings.routing.build([live.arm for live in ArmCatalog(settings).generation_arms()])
    except SettingsError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve_app(settings: Settings, host: str, port: int, access_log: bool, reuse_port: bool) -> int:
    """Build the app and serve it until stopped (one process; one worker of several with ``reuse_port``)."""
    from gateway.app import create_app
    from gateway.server import serve

    try:
        app = create_app(settings)  # builds the routing policy: an artifact that cannot be used fails here
    except SettingsError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
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
        http_server=settings.server.http_server,
        reuse_port=reuse_port,
        log_level=settings.server.log_level,
        access_log=access_log,
    )
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from gateway.auth import hash_key

    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not key:
        print("llm-gateway hash-key: no key given (type it at the prompt, or pipe it in)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _check(args: argparse.Namespace) -> int:
    """What ``serve`` checks before it listens: the settings, then the routing policy built and bound
    to the arms (a learned policy loads its artifact and encoder)."""
    settings = _settings(args)
    if settings is None:
        return 2
    if _check_policy(settings) != 0:
        return 2
    print(
        f"{args.config}: OK ({len(settings.backends)} backends, {len(settings.arms)} arms, "
        f"routing policy '{settings.routing.policy}' built)"
    )
    return 0


def _add_builtin(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = os.environ.get("GATEWAY_CONFIG")
    config_help = "YAML configuration file (GATEWAY_* variables override it; default: $GATEWAY_CONFIG)"
    serve = sub.add_parser("serve", help="run the gateway", formatter_class=HelpFormatter)
    serve.add_argument("--config", default=config, help=config_help)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--access-log", action="store_true", help="log every request (costs CPU under load)")
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        metavar="FMT",
        help="override server.log_format (text or json); json: one JSON object per log line, and one per "
        "finished request (request id, key, arm, backend, reason, status, TTFT, tokens, latency)",
    )
    serve.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        metavar="SERVER",
        help="override server.http_server: the HTTP server, uvicorn or granian (granian needs the 'granian' extra)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="override server.workers: N processes share the port (SO_REUSEPORT); rate limits, routing "
        "statistics, feedback memory and breakers are per process, /metrics covers all (see gateway/workers.py)",
    )
    serve.set_defaults(func=_serve)
    check = sub.add_parser(
        "check-config",
        help="validate a configuration file, build its routing policy, and exit",
        formatter_class=HelpFormatter,
    )
    check.add_argument("--config", default=config, help=config_help)
    check.set_defaults(func=_check)
    hash_cmd = sub.add_parser(
        "hash-key",
        help="print the SHA-256 of an API key (prompted for, or read from stdin), for auth.keys[].sha256",
        formatter_class=HelpFormatter,
    )
    hash_cmd.set_defaults(func=_hash_key)


def _missing(name: str, extra: str, reason: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(
            f"llm-gateway {name}: needs the '{extra}' extra ({reason}): pip install 'llm-gateway[{extra}]'",
            file=sys.stderr,
        )
        return 2

    return run


def _add_plugin(sub: argparse._SubParsersAction[argparse.ArgumentParser], ep: EntryPoint) -> None:
    """Register the command of entry point ``ep``; a stand-in naming the extra when its package is missing.
    The extra is named after the command's top-level package (``lab.commands:train`` -> ``lab``)."""
    try:
        command: Command = ep.load()
    except ModuleNotFoundError as exc:
        extra = ep.module.partition(".")[0]
        parser = sub.add_parser(ep.name, help=f"(not installed: pip install 'llm-gateway[{extra}]')", add_help=False)
        parser.set_defaults(func=_missing(ep.name, extra, str(exc)), any_arguments=True)
        return
    parser = sub.add_parser(ep.name, help=command.help, formatter_class=HelpFormatter)
    command.add_arguments(parser)
    parser.set_defaults(func=command.run)


def plugin_commands() -> list[EntryPoint]:
    """The entry points of :data:`COMMANDS_GROUP`, by name (a name of the gateway's own commands is ignored)."""
    return sorted((ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name not in BUILTIN), key=lambda e: e.name)


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The command line: the gateway's commands, and with ``plugins`` those of :func:`plugin_commands`."""
    parser = argparse.ArgumentParser(
        prog="llm-gateway",
        description="OpenAI-compatible LLM gateway with a learned router.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_builtin(sub)
    if plugins:
        for ep in plugin_commands():
            _add_plugin(sub, ep)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(plugins=command not in BUILTIN)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):  # a missing command's stand-in takes any
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
