"""Affinity within an arm's replicas: consistent hashing with bounded load.

A conversation's turns, or requests sharing a long system prompt, reuse the KV cache only when they
reach the same vLLM replica (``--enable-prefix-caching``); least-loaded routing scatters them. Each
arm with more than one backend and ``affinity`` set hashes a request's *key* onto a ring of its
backends (64 virtual nodes each) and walks clockwise to the first backend that may take it:

- usable (healthy, breaker closed) and not already tried for this request;
- not overloaded: its load is at most ``load_factor`` x the mean load of the arm's usable backends,
  plus one request — consistent hashing with bounded loads (after Mirrokni, Thorup and
  Zadimoghaddam, 2018), so one hot session cannot pile up on one replica.

A replica that leaves moves only the keys that hashed to it; when it comes back they return. When
no backend qualifies the caller falls back to least-loaded. Keys (:func:`request_key`):

- ``session``: the ``x-session-id`` header, else the OpenAI ``user`` field; no key, no affinity;
- ``prefix``: those, else a hash of the conversation's opening (its system prompt and first user
  message, cut to ``prefix_chars``), so every turn of a conversation — which repeats its opening —
  and every request with the same long system prompt share a key.

Pure functions and one small class; no I/O.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

VNODES = 64
SESSION_HEADER = "x-session-id"
MAX_KEY_CHARS = 256  # a client-sent session id longer than this is hashed as its first 256 characters


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """The backends of one arm on a ring; :meth:`pick` walks it from a key's position."""

    __slots__ = ("_distinct", "_names", "_points")

    def __init__(self, names: Sequence[str], vnodes: int = VNODES) -> None:
        ring = sorted((_hash(f"{name}#{i}".encode()), name) for name in names for i in range(vnodes))
        self._points = [p for p, _ in ring]
        self._names = [n for _, n in ring]
        self._distinct = len(set(names))

    def walk(self, key: str) -> Iterable[str]:
        """Every backend once, in ring order from ``key``'s position."""
        if not self._points:
            return
        start = bisect.bisect(self._points, _hash(key.encode()))
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            name = self._names[(start + i) % n]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == self._distinct:
                    return

    def pick(self, key: str, loads: Mapping[str, float], load_factor: float) -> str | None:
        """The first backend from ``key`` that is a candidate (in ``loads``: usable, not excluded) and
        whose load is at most ``load_factor`` x the candidates' mean load plus one request; ``None`` if
        none is. (The "plus one" keeps a near-idle arm from moving keys over a single stream.)"""
        if not loads:
            return None
        bound = load_factor * sum(loads.values()) / len(loads) + 1.0
        for name in self.walk(key):
            if name in loads and loads[name] <= bound:
                return name
        return None


@dataclass
class Affinity:
    """One request's affinity: its arm's ring, its key, the load bound; ``kept`` is set by the
    choice (whether the key's replica took it)."""

    ring: HashRing
    key: str
    load_factor: float
    kept: bool = False


def request_key(mode: str, session: str | None, body: Mapping[str, Any], prefix_chars: int) -> str | None:
    """The affinity key of a request under ``mode`` (``none``, ``session``, ``prefix``), or ``None``;
    ``session``: its ``x-session-id`` header."""
    if mode == "none":
        return None
    if session:
        return "s:" + session[:MAX_KEY_CHARS]
    user = body.get("user")
    if isinstance(user, str) and user:
        return "u:" + user[:MAX_KEY_CHARS]
    if mode != "prefix":
        return None
    text = _prompt_prefix(body, prefix_chars)
    if not text:
        return None
    return "p:" + hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=12).hexdigest()


def _prompt_prefix(body: Mapping[str, Any], limit: int) -> str:
    """The opening every request of a conversation repeats, cut to ``limit`` characters: a
    completion's ``prompt``; a chat's leading system/developer messages and its first user message,
    as ``role: text`` lines (text parts of multi-part content only). A system prompt longer than
    ``limit`` is the whole key, so requests sharing it meet on one replica (bounded load spreads
    them when it is busy); a short one is told apart by the first user message."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt[:limit]
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    out: list[str] = []
    size = 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if not isinstance(content, str):
            continue
        out.append(f"{role}: {content}\n")
        size += len(out[-1])
        if size >= limit or role not in ("system", "developer"):
            break  # through the first user (or other) message: what the next turns repeat
    return "".join(out)[:limit]
