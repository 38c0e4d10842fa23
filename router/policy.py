"""Routing policies: turn a request and the candidates' live state into a :class:`Decision`.

A policy is registered by name and built once at start-up; :meth:`Policy.decide` is called on
the event loop for every request, so it must be fast (well under a millisecond for the
rule-based policies here) and must not block. Policies are deterministic: the same request
and states give the same decision — except a learned policy told to explore
(``routing.params.explore``), whose draws a ``seed`` makes repeatable.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router.decision import Arm, ArmState, Decision, NoArmAvailable, RouteRequest


class Policy(ABC):
    """Chooses one arm among candidates.

    ``candidates`` are in configuration order and non-empty. Implementations must raise
    :class:`NoArmAvailable` when no candidate is healthy, never pick an unhealthy arm while a
    healthy one exists, and honour ``request.flags.arm`` (a pinned arm) when it is a candidate.
    """

    name: str = ""
    needs_features: bool = False
    # featurize takes well under a millisecond: the gateway calls it on the event loop, sparing a thread hop
    cheap_features: bool = False

    def bind(self, arms: Sequence[Arm]) -> None:
        """Called once at start-up with every configured arm; raise ``ValueError`` to refuse them."""
        return None

    def featurize(self, prompt: str) -> Any:
        """Prompt features for :attr:`RouteRequest.features`; may block (the gateway runs it in a
        worker thread unless :attr:`cheap_features`). Only called when :attr:`needs_features` is true."""
        return None

    def logged_features(self, features: Any) -> list[float] | None:
        """What the decision log records of :meth:`featurize`'s result: a small raw feature vector
        a later training run can use as the prompt's vector, or ``None`` (nothing worth logging)."""
        return None

    @property
    def task_families(self) -> tuple[str, ...]:
        """The task families :attr:`Decision.family` can name (a fixed set: a metric label); none here."""
        return ()

    @abstractmethod
    def decide(self, request: RouteRequest, candidates: Sequence[ArmState]) -> Decision:
        """Return the decision; raise :class:`NoArmAvailable` if nothing can serve (and
        :class:`~router.decision.RouteUnmeetable` when ``request.flags.strict`` cannot be kept)."""

    def observe(self, arm: str, predicted_s: float, actual_s: float) -> None:
        """A request ``arm`` served finished: its forecast and actual end-to-end seconds. Called on
        the event loop for every successful generation the policy forecast; must be cheap."""
        return None


_REGISTRY: dict[str, Callable[[Mapping[str, Any]], Policy]] = {}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    """Class decorator: register a policy; its constructor takes the config mapping as kwargs."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY:
            raise ValueError(f"policy '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = lambda params: cls(**params)
        return cls

    return wrap


# Policies whose module is heavy to import (model runtimes) register when first built.
_LAZY = {"learned": "router.learned"}


def available_policies() -> list[str]:
    """Registered policy names, sorted."""
    return sorted({*_REGISTRY, *_LAZY})


def build_policy(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    """Build the policy registered as ``name``; ``ValueError`` names an unknown one or bad params."""
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown routing policy '{name}'; available: " + ", ".join(available_policies()))
    try:
        return factory(params or {})
    except TypeError as exc:
        raise ValueError(f"routing policy '{name}': bad parameters: {exc}") from exc


def pinned_decision(request: RouteRequest, candidates: Sequence[ArmState]) -> Decision | None:
    pin = request.flags.arm
    if pin is None:
        return None
    for state in candidates:
        if state.arm.name == pin:
            if not state.healthy:
                raise NoArmAvailable(f"pinned arm '{pin}' has no healthy backend")
            return Decision(arm=state.arm, reason="pinned", ranked=(state.arm,))
    raise NoArmAvailable(f"pinned arm '{pin}' is not among the candidates")


@register_policy("least-loaded")
class LeastLoadedPolicy(Policy):
    """The default rule-based policy.

    Healthy arms only. With ``prefer: speed`` it ranks by expected latency from live
    measurements (TTFT + ``max_tokens`` / decode speed, scaled by load) where both are known;
    otherwise, and for every other preference, by load, then configuration order. It knows
    nothing of quality: the learned policy does.
    """

    def __init__(self, assumed_output_tokens: int = 256) -> None:
        if assumed_output_tokens <= 0:
            raise TypeError("assumed_output_tokens must be positive")
        self.assumed_output_tokens = assumed_output_tokens

    def decide(self, request: RouteRequest, candidates: Sequence[ArmState]) -> Decision:
        pinned = pinned_decision(request, candidates)
        if pinned is not None:
            return pinned
        healthy = [(i, s) for i, s in enumerate(candidates) if s.healthy]
        if not healthy:
            raise NoArmAvailable("no candidate arm has a healthy backend")
        if len(candidates) == 1:
            return Decision(arm=healthy[0][1].arm, reason="single-arm", ranked=(healthy[0][1].arm,))
        reason = "least-loaded"
        if request.flags.prefer == "speed" and all(s.ttft_s and s.tokens_per_s for _, s in healthy):
            tokens = request.max_tokens or self.assumed_output_tokens
            healthy.sort(
                key=lambda p: (((p[1].ttft_s or 0.0) + tokens / (p[1].tokens_per_s or 1.0)) * (1.0 + p[1].load), p[0])
            )
            reason = "fastest-measured"
        else:
            healthy.sort(key=lambda p: (p[1].load, p[0]))
        ranked = tuple(s.arm for _, s in healthy)
        return Decision(arm=ranked[0], reason=reason, ranked=ranked)
