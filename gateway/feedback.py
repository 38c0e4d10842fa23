"""Caller feedback on answers, joined to the routing decision that produced them (``POST /v1/feedback``).

Every generation gets a request id (``x-request-id`` response header). The gateway sends it
upstream as ``X-Request-Id``, which vLLM uses for the response's own ``id`` (``chatcmpl-<id>``,
``cmpl-<id>``), so a client can rate an answer by either. :class:`RouteLog` remembers the last
``remember`` decisions in memory (arm, model, strategy, backend, reason, the API key's name, and the
prompt when ``store_prompts`` is on, within ``prompt_memory_bytes``); :class:`FeedbackLog` appends
one JSON line per rating, joined with the decision. Only a decision the gateway still remembers,
made for the same API key (or, with auth off, for any caller), can be rated: any other id is a 404,
the same for an id that never existed, was forgotten, or belongs to another key.

The JSONL is what ``llm-gateway train`` needs to learn from real traffic: prompt, arm, and a
quality label. Prompts are written only when ``feedback.store_prompts`` is true; otherwise the
line carries the prompt's sha256, enough to join with a prompt store the operator keeps.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gateway.jsonl import append_line, encode_line

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
    key: str | None = None  # the API key's configured name (None: auth off)


class RouteLog:
    """The last ``capacity`` routing decisions by request id (an LRU; thread-safe, O(1) amortised).

    With ``store_prompts`` the prompts' text is kept too, at most ``prompt_memory_bytes`` of it (their
    in-memory size): past that the oldest records lose their text (their sha256 stays), and a prompt
    larger than the whole budget is not kept at all.
    """

    def __init__(
        self, capacity: int, *, store_prompts: bool = False, prompt_memory_bytes: int = 64 * 1024 * 1024
    ) -> None:
        """``capacity`` 0 remembers nothing (every rating is then refused)."""
        self.capacity = capacity
        self.store_prompts = store_prompts
        self.prompt_memory_bytes = prompt_memory_bytes
        self.prompt_bytes = 0  # in-memory size of the prompts kept
        self._records: OrderedDict[str, RouteRecord] = OrderedDict()
        self._prompted: OrderedDict[str, int] = OrderedDict()  # request ids whose prompt is kept -> its size
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
        key: str | None = None,
    ) -> None:
        if self.capacity <= 0:
            return
        size = sys.getsizeof(prompt) if self.store_prompts else 0
        kept = self.store_prompts and size <= self.prompt_memory_bytes
        record = RouteRecord(
            request_id=request_id,
            endpoint=endpoint,
            arm=arm,
            model=model,
            strategy=strategy,
            backend=backend,
            reason=reason,
            prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
            prompt=prompt if kept else None,
            at=time.time(),
            key=key,
        )
        with self._lock:
            self._forget_prompt(request_id)
            self._records[request_id] = record
            self._records.move_to_end(request_id)
            if kept:
                self._prompted[request_id] = size
                self.prompt_bytes += size
            while len(self._records) > self.capacity:
                oldest, _ = self._records.popitem(last=False)
                self._forget_prompt(oldest)
            while self.prompt_bytes > self.prompt_memory_bytes:  # the oldest prompts go first
                oldest, size = self._prompted.popitem(last=False)
                self.prompt_bytes -= size
                self._records[oldest] = replace(self._records[oldest], prompt=None)

    def _forget_prompt(self, request_id: str) -> None:
        self.prompt_bytes -= self._prompted.pop(request_id, 0)

    def find(self, response_id: str, *, key: str | None) -> RouteRecord | None:
        """The decision made for ``key`` (an API key's name; ``None``: auth off) under a request id or a
        response id derived from it (``chatcmpl-<id>``, ``chatcmpl-<id>-<n>`` for a stage of a
        multi-call strategy); ``None`` when unknown *or* made for another key (the caller cannot tell)."""
        with self._lock:
            for prefix in ("", *ID_PREFIXES):
                if not response_id.startswith(prefix):
                    continue
                rid = response_id[len(prefix) :]
                # multi-call strategies (pdr) send <request id>-<n> upstream
                found = self._records.get(rid) or self._records.get(rid.rsplit("-", 1)[0])
                if found is not None and found.key == key:
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
        route: RouteRecord,
        *,
        comment: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Write one line and return it; ``key`` is the rating key's name (the route's: only its own key
        may rate it). Raises ``OSError`` if the file cannot be written."""
        line: dict[str, Any] = {
            "at": time.time(),
            "id": response_id,
            "rating": rating,
            "matched": True,  # kept for readers of older files, where unknown ids were recorded too
            "key": route.key,
            "comment": comment,
            "labels": labels or {},
            "route": {k: v for k, v in asdict(route).items() if v is not None},
        }
        data = encode_line(line)
        with self._lock:
            append_line(self.path, data)
        return line
