"""Server-sent events as OpenAI-compatible servers write them: framing, usage, the model rename.

One implementation, used by the relay (:mod:`gateway.relay`) for every stream, single-call or PDR,
and by the non-streaming strategies for the model rename.

* :class:`EventSplitter` turns upstream reads into complete events. Events end with a blank line;
  CRLF and lone CR line ends (the SSE spec allows both) are normalised to LF, including a CRLF cut
  between two reads; extra blank lines between events (llama.cpp's server ends each with ``\n\n\r\n``)
  are dropped. vLLM writes LF only, and then the splitter does one ``in`` test per read.
* :class:`Rename` rewrites the served model name to the public one. Fast path: a bytes replace of
  vLLM's compact ``"model":"served"`` (a quoted ``"model":`` cannot occur unescaped inside a string).
* :func:`is_spaced` / :func:`compact`: an upstream that writes JSON with spaces (``"model": "x"``,
  Python's default) is normalised once per event to compact JSON, so the fast paths (rename, usage,
  role and token detection) hold for it too. Whether a stream needs it is decided on its first event.
* :func:`usage_of`, :func:`is_token_event`, :func:`with_usage`, :func:`error_event`: the rest of what
  the gateway reads or writes in a stream.

Async-safety: plain functions and per-stream objects; no I/O.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from gateway.errors import GatewayError

SEP = b"\n\n"
DONE = b"data: [DONE]"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


#: default of ``streaming.max_event_bytes``: the largest upstream SSE event relayed
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(Exception):
    """An upstream SSE event (complete or still arriving) is larger than the splitter's limit."""


class EventSplitter:
    """Complete SSE events (without their blank-line terminator) from the reads of one stream.

    An event longer than ``max_event_bytes``, complete or not, raises :class:`EventTooLarge`: an
    incomplete one is never buffered past the limit (plus one read)."""

    __slots__ = ("buf", "cr", "limit")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.buf = b""
        self.cr = False  # the last read ended with CR: it may be half of a CRLF
        self.limit = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes] | None:
        """The events completed by ``chunk``, or ``None`` while the current one is incomplete.
        Raises :class:`EventTooLarge`."""
        if self.cr or b"\r" in chunk:
            chunk = self._lf(chunk)
        buf = self.buf + chunk if self.buf else chunk
        if SEP not in buf:
            if len(buf) > self.limit:
                raise EventTooLarge(len(buf))
            self.buf = buf
            return None
        *events, rest = buf.split(SEP)
        if len(buf) > self.limit and (len(rest) > self.limit or any(len(e) > self.limit for e in events)):
            raise EventTooLarge(len(buf))
        if buf[0] == 10 or b"\n\n\n" in buf:  # a run of blank lines ends one event, not several
            events = [stripped for ev in events if (stripped := ev.lstrip(b"\n"))]
        self.buf = rest.lstrip(b"\n") if rest[:1] == b"\n" else rest
        return events

    def end(self) -> list[bytes] | None:
        """At the end of the stream: the event a final lone CR completes, if any."""
        if not self.cr:
            if not self.buf.strip(b"\n"):
                self.buf = b""  # blank lines after the last event
            return None
        self.cr = False
        return self.feed(b"\n")

    def _lf(self, chunk: bytes) -> bytes:
        if self.cr:
            chunk = b"\r" + chunk
        self.cr = chunk.endswith(b"\r")
        if self.cr:
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class Rename:
    """Served → public model name in a JSON event or body. Immutable; :meth:`of` shares one per pair."""

    __slots__ = ("needle", "public", "replacement", "served")

    _shared: ClassVar[dict[tuple[str, str], Rename]] = {}

    def __init__(self, served: str, public: str) -> None:
        self.served, self.public = served, public
        self.needle = b'"model":' + orjson.dumps(served)
        self.replacement = b'"model":' + orjson.dumps(public)

    @classmethod
    def of(cls, served: str, public: str) -> Rename:
        """The rename for this pair, built once (pairs are bounded by the configuration)."""
        rename = cls._shared.get((served, public))
        if rename is None:
            rename = cls._shared[(served, public)] = cls(served, public)
        return rename

    def event(self, event: bytes) -> bytes:
        """``event`` (compact JSON) with its first ``"model":"served"`` renamed."""
        return event.replace(self.needle, self.replacement, 1)

    def events(self, data: bytes) -> bytes:
        """Compact JSON events (SSE framing included) with each one's ``"model":"served"`` renamed: one
        replace over all of them (the needle cannot occur unescaped inside a JSON string)."""
        return data.replace(self.needle, self.replacement)

    def body(self, content: bytes, doc: dict[str, Any]) -> bytes:
        """A whole answer: ``content`` as received, ``doc`` the same parsed. Compact JSON is renamed in
        place (bytes kept as they are); any other spelling is re-encoded from ``doc``."""
        renamed = content.replace(self.needle, self.replacement, 1)
        if renamed is content and doc.get("model") == self.served:  # bytes.replace returns self: no match
            doc["model"] = self.public
            return orjson.dumps(doc)
        return renamed


def is_spaced(event: bytes) -> bool:
    """Whether a ``data:`` JSON event is written with a space after its keys' colons (not vLLM's compact
    form). Looks at the first key only: text further on may hold anything."""
    i = event.find(b'":', 5)
    return i > 0 and event[i + 2 : i + 3] == b" "


def compact(event: bytes) -> bytes:
    """A ``data:`` JSON event re-encoded compactly (unchanged if it is not valid JSON: the caller's
    checks then see it as it is)."""
    try:
        return b"data: " + orjson.dumps(orjson.loads(event[5:]))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return event


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a ``data:`` JSON event, or ``None``."""
    try:
        usage = orjson.loads(event[5:]).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def with_usage(event: bytes, usage: dict[str, Any]) -> bytes:
    """``event`` (a JSON object) with its ``usage`` replaced."""
    data = orjson.loads(event[5:])
    data["usage"] = usage
    return b"data: " + orjson.dumps(data)


def usage_event(head: bytes | None, usage: dict[str, Any]) -> bytes:
    """A usage-only chunk (``"choices":[]``) with the ``id``/``object``/``created``/``model`` of ``head``
    (another event of the same stream), for a stream whose upstream sent none."""
    chunk: dict[str, Any] = {"object": "chat.completion.chunk"}
    if head is not None:
        try:
            data = orjson.loads(head[5:])
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            chunk.update({k: data[k] for k in ("id", "object", "created", "model") if k in data})
    chunk.update(choices=[], usage=usage)
    return b"data: " + orjson.dumps(chunk)


def summed(total: dict[str, int], usage: Any) -> dict[str, int]:
    """``total`` plus the integer counts of ``usage``; ``total_tokens`` made up if ``usage`` lacks it."""
    out = dict(total)
    if not isinstance(usage, dict):
        return out
    for key in USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
    if not isinstance(usage.get("total_tokens"), int):
        out["total_tokens"] = out.get("prompt_tokens", 0) + out.get("completion_tokens", 0)
    return out


_NOT_TOKENS = (
    b'"choices":[]',  # the usage chunk
    b'"content":""',  # vLLM's role chunk, an empty delta
    b'"text":""',  # an empty completion chunk (often the one with the finish_reason)
    b'"delta":{}',  # a finish_reason-only chat chunk (llama.cpp)
    b'"delta":{"role":"assistant"}',  # a role chunk without content (llama.cpp)
)


_USAGE_ONLY, _EMPTY_CONTENT, _EMPTY_TEXT, _EMPTY_DELTA, _ROLE_ONLY = _NOT_TOKENS


def is_token_event(event: bytes) -> bool:
    """Whether a compact JSON chunk carries generated text (or a tool call): role-only, empty and
    usage-only chunks do not, so TTFT and inter-token latency count from real tokens. (Written out
    rather than ``any()`` over :data:`_NOT_TOKENS`: once per streamed token, a quarter less time.)"""
    return not (
        _EMPTY_CONTENT in event
        or _USAGE_ONLY in event
        or _EMPTY_TEXT in event
        or _EMPTY_DELTA in event
        or _ROLE_ONLY in event
    )


def has_finish(event: bytes) -> bool:
    """Whether a compact JSON chunk sets a ``finish_reason`` (``"finish_reason":null`` does not; the bytes
    cannot occur unescaped inside a string)."""
    return b'"finish_reason":"' in event


def error_data(exc: GatewayError) -> bytes:
    """The ``data:`` event (without its blank line) carrying ``exc``'s envelope."""
    return b"data: " + orjson.dumps(exc.body())


def error_event(exc: GatewayError) -> bytes:
    """An error after the stream started: one ``data:`` event with the envelope, then ``[DONE]``."""
    return error_data(exc) + b"\n\ndata: [DONE]\n\n"
