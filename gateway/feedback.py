"""Caller feedback on answers, joined to the routing decision that produced them (``POST /v1/feedback``).

Every generation gets a request id (``x-request-id`` response header). The gateway sends it
upstream as ``X-Request-Id``, which vLLM uses for the response's own ``id`` (``chatcmpl-<id>``,
``cmpl-<id>``), so a client can rate an answer by either. :class:`RouteLog` remembers the last
``remember`` decisions in memory (arm, model, strategy, backend, reason, and the prompt when
``store_prompts`` is on); :class:`FeedbackLog` appends one JSON line per rating, joined with the
decision when it is still remembered (``"matched": true``). Ratings for ids the gateway no longer
remembers (a restart, another replica) are still recorded, with ``"matched": false``.

The JSONL is what ``llm-gateway train`` needs to learn from real traffic: prompt, arm, and a
quality label. Prompts are written only when ``feedback.store_prompts`` is true; otherwise the
line carries the prompt's sha256, enough to join with a prompt store the operator keeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.jsonl import append_line

# Response ids vLLM derives from X-Request-Id, by endpoint.
ID_PREFIXES = ("chatcmpl-", "cmpl-")


@dataclass(frozen=True)
class RouteRecord:
    """What the gateway decided for one request."""

    request_id: str
    endpoint: str
    arm: str
    model: str
    strategy: str
    backend: str
    reason: str
    prompt_sha256: str
    prompt: str | None
    at: float


class RouteLog:
    """The last ``capacity`` routing decisions by request id (an LRU; thread-safe, O(1))."""

    def __init__(self, capacity: int, *, store_prompts: bool = False) -> None:
        """``capacity`` 0 remembers nothing (every rating is then unmatched)."""
        self.capacity = capacity
        self.store_prompts = store_prompts
        self._records: OrderedDict[str, RouteRecord] = OrderedDict()
        self._lock = threading.Lock()

    def remember(
        self,
        request_id: str,
        *,
        endpoint: str,
        arm: str,
        model: str,
        strategy: str,
        backend: str,
        reason: str,
        prompt: str,
    ) -> None:
        if self.capacity <= 0:
            return
        record = RouteRecord(
            request_id=request_id,
            endpoint=endpoint,
            arm=arm,
            model=model,
            strategy=strategy,
            backend=backend,
            reason=reason,
            prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
            prompt=prompt if self.store_prompts else None,
            at=time.time(),
        )
        with self._lock:
            self._records[request_id] = record
            self._records.move_to_end(request_id)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def find(self, response_id: str) -> RouteRecord | None:
        """The decision for a request id or a response id derived from it (``chatcmpl-<id>``,
        ``chatcmpl-<id>-<n>`` for a stage of a multi-call strategy)."""
        with self._lock:
            for prefix in ("", *ID_PREFIXES):
                if not response_id.startswith(prefix):
                    continue
                rid = response_id[len(prefix) :]
                # multi-call strategies (pdr) send <request id>-<n> upstream
                found = self._records.get(rid) or self._records.get(rid.rsplit("-", 1)[0])
                if found is not None:
                    return found
            return None

    def __len__(self) -> int:
        return len(self._records)


class FeedbackLog:
    """Appends ratings as JSON lines to ``path`` (created with its directory; one write per line)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()

    def record(
        self,
        response_id: str,
        rating: float,
        route: RouteRecord | None,
        *,
        comment: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Write one line and return it. Raises ``OSError`` if the file cannot be written."""
        line: dict[str, Any] = {
            "at": time.time(),
            "id": response_id,
            "rating": rating,
            "matched": route is not None,
            "comment": comment,
            "labels": labels or {},
        }
        if route is not None:
            line["route"] = {k: v for k, v in asdict(route).items() if v is not None}
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            append_line(self.path, data)
        return line
