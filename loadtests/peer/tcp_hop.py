"""The floor of one extra hop: a bare asyncio TCP proxy that forwards bytes both ways, one upstream
connection per client connection, no HTTP parsing. Standard library only.

Run: ``python -m loadtests.peer.tcp_hop LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT``
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Copy ``r`` to ``w`` until EOF or a connection error, then close ``w``."""
    try:
        while b := await r.read(65536):
            w.write(b)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            w.close()


async def serve(port: int, up_host: str, up_port: int) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(up_host, up_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, uw), pipe(ur, cw))

    srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with srv:
        await srv.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or ":" not in args[1]:
        print(__doc__, file=sys.stderr)
        return 2
    host, port = args[1].rsplit(":", 1)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(args[0]), host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
