"""Parsing the caller's routing flags from the request body (``route``) and headers (``x-route-*``).

Body field ``route``::

    {"accuracy": "low" | "medium" | "high" | number in [0, 1],
     "max_latency_ms": int > 0, "max_ttft_ms": int > 0,
     "prefer": "quality" | "balanced" | "speed",
     "arm": "<arm name>",
     "strict": bool,                          # refuse (422) instead of answering outside the flags
     "priority": "latency" | "accuracy"}      # which flag wins when both cannot be met

Headers ``x-route-accuracy``, ``x-route-max-latency-ms``, ``x-route-max-ttft-ms``,
``x-route-prefer``, ``x-route-arm``, ``x-route-strict``, ``x-route-priority`` do the same; a body
value wins over its header. Named
accuracy levels are resolved by the policy (they are calibrated on data), so
:class:`~router.decision.RouteFlags` keeps them as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from router.decision import Prefer, Priority, RouteFlags

ACCURACY_LEVELS = ("low", "medium", "high")
_PREFER = get_args(Prefer)
_PRIORITY = get_args(Priority)
_FIELDS = ("accuracy", "max_latency_ms", "max_ttft_ms", "prefer", "arm", "strict", "priority")
HEADERS = {
    "accuracy": "x-route-accuracy",
    "max_latency_ms": "x-route-max-latency-ms",
    "max_ttft_ms": "x-route-max-ttft-ms",
    "prefer": "x-route-prefer",
    "arm": "x-route-arm",
    "strict": "x-route-strict",
    "priority": "x-route-priority",
}


class FlagError(ValueError):
    """A flag is invalid. ``param`` names it as the client wrote it (``route.prefer`` or a header)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


def _accuracy(value: Any, param: str, from_header: bool) -> float | str:
    if isinstance(value, str):
        if value in ACCURACY_LEVELS:
            return value
        if from_header:
            try:
                value = float(value)
            except ValueError:
                value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise FlagError(param, f"must be one of {list(ACCURACY_LEVELS)} or a number in [0, 1]")
    return float(value)


#: A header's milliseconds: ASCII digits only (``str.isdigit`` accepts "²", which ``int`` refuses), and
#: few enough that ``int`` stays cheap and below Python's 4,300-digit conversion limit (~115 days).
_MAX_MS_DIGITS = 10


def _positive_int(value: Any, param: str, from_header: bool) -> int:
    if from_header and isinstance(value, str):
        digits = value.strip()
        if 0 < len(digits) <= _MAX_MS_DIGITS and digits.isascii() and digits.isdigit():
            value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FlagError(param, "must be a positive integer (milliseconds)")
    return value


def _choice(value: Any, param: str, from_header: bool) -> str:
    if value not in _PREFER:
        raise FlagError(param, f"must be one of {list(_PREFER)}")
    return str(value)


def _priority(value: Any, param: str, from_header: bool) -> str:
    if value not in _PRIORITY:
        raise FlagError(param, f"must be one of {list(_PRIORITY)}")
    return str(value)


def _bool(value: Any, param: str, from_header: bool) -> bool:
    if from_header and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise FlagError(param, "must be true or false")
    return value


def _name(value: Any, param: str, from_header: bool) -> str:
    if not isinstance(value, str) or not value:
        raise FlagError(param, "must be a non-empty arm name")
    return value


_PARSERS = {
    "accuracy": _accuracy,
    "max_latency_ms": _positive_int,
    "max_ttft_ms": _positive_int,
    "prefer": _choice,
    "arm": _name,
    "strict": _bool,
    "priority": _priority,
}


def parse_flags(body_route: Any, headers: Mapping[str, str]) -> RouteFlags:
    """Build :class:`RouteFlags` from the body's ``route`` value (or ``None``) and request headers.

    ``headers`` must be case-insensitive or lower-cased. Raises :class:`FlagError`.
    """
    if body_route is not None and not isinstance(body_route, dict):
        raise FlagError("route", "must be an object")
    body_route = body_route or {}
    unknown = set(body_route) - set(_FIELDS)
    if unknown:
        raise FlagError(f"route.{sorted(unknown)[0]}", f"unknown routing flag; known: {', '.join(_FIELDS)}")
    values: dict[str, Any] = {}
    for name in _FIELDS:
        parse = _PARSERS[name]
        if name in body_route and body_route[name] is not None:
            values[name] = parse(body_route[name], f"route.{name}", False)
        else:
            header = headers.get(HEADERS[name])
            if header is not None and header != "":
                values[name] = parse(header, HEADERS[name], True)
    return RouteFlags(**values)
