"""Decoding strategies: what an arm does with its model, registered by name.

vLLM sets speculative decoding per server and has no per-request switch, so a strategy
describes how the *backends* of an arm were started (``plain``, ``speculative``) or, later,
an orchestration the gateway runs itself. Each kind validates its own parameters; an unknown
kind or a bad parameter fails at start-up with a message that names it.

Add a kind with :func:`register_strategy`::

    @register_strategy("my-kind")
    class MyStrategy(Strategy):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class StrategyError(ValueError):
    """A strategy kind is unknown or its parameters are invalid (raised at start-up)."""


@dataclass(frozen=True)
class Strategy:
    """Base class for a decoding strategy.

    ``kind`` is the registered name; ``params`` the validated parameters (JSON-compatible).
    ``label`` is what metrics and the ``x-route-strategy`` header show: it must be stable and
    low-cardinality (e.g. ``speculative-ngram-k4``).
    """

    kind: ClassVar[str] = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Strategy:
        """Validate ``params`` (everything in ``strategy:`` except ``kind``) and build."""
        if params:
            raise StrategyError(f"strategy '{cls.kind}' takes no parameters, got {sorted(params)}")
        return cls()

    @property
    def label(self) -> str:
        return self.kind


_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(kind: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a :class:`Strategy` subclass under ``kind``."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if kind in _REGISTRY:
            raise StrategyError(f"strategy kind '{kind}' registered twice")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def available_strategies() -> list[str]:
    """Registered strategy kinds, sorted."""
    return sorted(_REGISTRY)


def build_strategy(spec: Mapping[str, Any]) -> Strategy:
    """Build a strategy from its config mapping ``{"kind": ..., **params}``.

    Raises :class:`StrategyError` naming the unknown kind or the bad parameter.
    """
    params = dict(spec)
    kind = params.pop("kind", None)
    if not isinstance(kind, str) or not kind:
        raise StrategyError("strategy needs a 'kind'; available: " + ", ".join(available_strategies()))
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise StrategyError(f"unknown strategy kind '{kind}'; available: " + ", ".join(available_strategies()))
    return cls.from_params(params)


@register_strategy("plain")
@dataclass(frozen=True)
class PlainStrategy(Strategy):
    """The model decodes token by token with no speculation."""


_SPEC_METHODS = ("ngram", "draft")


@register_strategy("speculative")
@dataclass(frozen=True)
class SpeculativeStrategy(Strategy):
    """Speculative decoding configured on the arm's vLLM servers (``--speculative-config``).

    Parameters: ``method`` (``ngram`` prompt lookup or ``draft`` model) and
    ``num_speculative_tokens`` (k, 1..16). The gateway does not start the servers; this records
    what they run so routing, metrics and profiling can tell the arms apart.
    """

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Strategy:
        unknown = set(params) - {"method", "num_speculative_tokens"}
        if unknown:
            raise StrategyError(f"strategy 'speculative': unknown parameter(s) {sorted(unknown)}")
        method = params.get("method", "ngram")
        if method not in _SPEC_METHODS:
            raise StrategyError(f"strategy 'speculative': method must be one of {list(_SPEC_METHODS)}, got {method!r}")
        k = params.get("num_speculative_tokens")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 16:
            raise StrategyError(
                f"strategy 'speculative': num_speculative_tokens must be an integer in 1..16, got {k!r}"
            )
        return cls(params={"method": method, "num_speculative_tokens": k})

    @property
    def label(self) -> str:
        return f"speculative-{self.params['method']}-k{self.params['num_speculative_tokens']}"
