"""Decoding strategies: what an arm does with its model, registered by name.

vLLM sets speculative decoding per server and has no per-request switch, so a strategy
describes how the *backends* of an arm were started (``plain``, ``speculative``), which model
variant they serve (``layer-skip``) or an orchestration the gateway runs itself (``pdr``). Each
kind validates its own parameters; an unknown kind or a bad parameter fails at start-up with a
message that names it.

Add a kind with :func:`register_strategy`::

    @register_strategy("my-kind")
    class MyStrategy(Strategy):
        ...
"""

from __future__ import annotations

import re
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


@register_strategy("layer-skip")
@dataclass(frozen=True)
class LayerSkipStrategy(Strategy):
    """A layer-pruned variant of ``source`` served as its own model (``llm-gateway make-variant``).

    vLLM has no per-request layer skipping, so the arm's servers serve a checkpoint with decoder
    layers removed (Block Influence, ShortGPT). Parameters: exactly one of ``dropped`` (layers
    removed, 1..256) and ``keep_ratio`` (fraction kept, in (0, 1)); optional ``source`` (the
    source model's name, informational). Label: ``layer-skip-d4`` or ``layer-skip-k75``
    (percent kept).
    """

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Strategy:
        unknown = set(params) - {"dropped", "keep_ratio", "source"}
        if unknown:
            raise StrategyError(f"strategy 'layer-skip': unknown parameter(s) {sorted(unknown)}")
        dropped, ratio = params.get("dropped"), params.get("keep_ratio")
        if (dropped is None) == (ratio is None):
            raise StrategyError("strategy 'layer-skip': give exactly one of 'dropped' and 'keep_ratio'")
        out: dict[str, Any] = {}
        if dropped is not None:
            if not isinstance(dropped, int) or isinstance(dropped, bool) or not 1 <= dropped <= 256:
                raise StrategyError(f"strategy 'layer-skip': dropped must be an integer in 1..256, got {dropped!r}")
            out["dropped"] = dropped
        else:
            if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0.0 < ratio < 1.0:
                raise StrategyError(f"strategy 'layer-skip': keep_ratio must be a number in (0, 1), got {ratio!r}")
            out["keep_ratio"] = float(ratio)
        source = params.get("source")
        if source is not None:
            if not isinstance(source, str) or not source:
                raise StrategyError(f"strategy 'layer-skip': source must be a non-empty string, got {source!r}")
            out["source"] = source
        return cls(params=out)

    @property
    def label(self) -> str:
        if "dropped" in self.params:
            return f"layer-skip-d{self.params['dropped']}"
        return f"layer-skip-k{round(100 * self.params['keep_ratio'])}"


def _int_param(kind: str, params: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise StrategyError(f"strategy '{kind}': {name} must be an integer in {lo}..{hi}, got {value!r}")
    return value


@register_strategy("pdr")
@dataclass(frozen=True)
class PDRStrategy(Strategy):
    """Parallel draft → distill → refine, orchestrated by the gateway (``gateway/strategies/pdr_runner.py``).

    Each round: ``drafts`` diverse drafts in parallel (temperature ``draft_temperature``, a
    distinct seed each, at most ``draft_max_tokens`` each), distilled into a workspace of at most
    ``workspace_tokens``, then a refinement that answers from the original messages plus the
    workspace. Later rounds see the previous round's answer. ``drafts: 1`` is sequential
    refinement.

    Parameters (all optional): ``drafts`` (1..16, default 4), ``rounds`` (1..4, default 1),
    ``workspace_tokens`` (64..4096, default 512), ``draft_max_tokens`` (16..32768, default
    1024), ``draft_temperature`` (0..2, default 0.8), ``draft_arm`` / ``refine_arm`` (names of
    arms whose backends run the drafts / the distill and refine stages; default: this arm's
    own). The arm names are checked against the configuration by the gateway, not here.
    Label: ``pdr-n4-r1``.
    """

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Strategy:
        known = {"drafts", "rounds", "workspace_tokens", "draft_max_tokens", "draft_temperature"}
        unknown = set(params) - known - {"draft_arm", "refine_arm"}
        if unknown:
            raise StrategyError(f"strategy 'pdr': unknown parameter(s) {sorted(unknown)}")
        out: dict[str, Any] = {
            "drafts": _int_param("pdr", params, "drafts", 4, 1, 16),
            "rounds": _int_param("pdr", params, "rounds", 1, 1, 4),
            "workspace_tokens": _int_param("pdr", params, "workspace_tokens", 512, 64, 4096),
            "draft_max_tokens": _int_param("pdr", params, "draft_max_tokens", 1024, 16, 32768),
        }
        temp = params.get("draft_temperature", 0.8)
        if not isinstance(temp, int | float) or isinstance(temp, bool) or not 0.0 <= temp <= 2.0:
            raise StrategyError(f"strategy 'pdr': draft_temperature must be a number in [0, 2], got {temp!r}")
        out["draft_temperature"] = float(temp)
        for name in ("draft_arm", "refine_arm"):
            arm = params.get(name)
            if arm is None:
                continue
            if not isinstance(arm, str) or not arm:
                raise StrategyError(f"strategy 'pdr': {name} must be a non-empty arm name, got {arm!r}")
            out[name] = arm
        return cls(params=out)

    @property
    def drafts(self) -> int:
        return int(self.params["drafts"])

    @property
    def rounds(self) -> int:
        return int(self.params["rounds"])

    @property
    def workspace_tokens(self) -> int:
        return int(self.params["workspace_tokens"])

    @property
    def draft_max_tokens(self) -> int:
        return int(self.params["draft_max_tokens"])

    @property
    def draft_temperature(self) -> float:
        return float(self.params["draft_temperature"])

    @property
    def draft_arm(self) -> str | None:
        arm = self.params.get("draft_arm")
        return arm if isinstance(arm, str) else None

    @property
    def refine_arm(self) -> str | None:
        arm = self.params.get("refine_arm")
        return arm if isinstance(arm, str) else None

    @property
    def label(self) -> str:
        return f"pdr-n{self.params['drafts']}-r{self.params['rounds']}"


_LABELS = (
    (re.compile(r"plain"), lambda m: {"kind": "plain"}),
    (
        re.compile(r"speculative-(ngram|draft)-k(\d+)"),
        lambda m: {"kind": "speculative", "method": m[1], "num_speculative_tokens": int(m[2])},
    ),
    (re.compile(r"layer-skip-d(\d+)"), lambda m: {"kind": "layer-skip", "dropped": int(m[1])}),
    (re.compile(r"layer-skip-k(\d+)"), lambda m: {"kind": "layer-skip", "keep_ratio": int(m[1]) / 100}),
    (re.compile(r"pdr-n(\d+)-r(\d+)"), lambda m: {"kind": "pdr", "drafts": int(m[1]), "rounds": int(m[2])}),
)


def strategy_from_label(label: str) -> Strategy:
    """The strategy a :attr:`Strategy.label` names (as profile rows record it), with the parameters the
    label carries; ``StrategyError`` for a label no registered kind writes. For offline tools: the
    gateway builds strategies from its configuration."""
    for pattern, params in _LABELS:
        m = pattern.fullmatch(label)
        if m:
            return build_strategy(params(m))
    raise StrategyError(f"no strategy writes the label {label!r}")
