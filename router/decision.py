"""The routing vocabulary: arms, their live state, a request to route, and the decision.

All types are immutable dataclasses so decisions are deterministic and cheap to log. Nothing
here knows about HTTP: the gateway translates requests into :class:`RouteRequest` and live
backend statistics into :class:`ArmState`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from router.predictor import Prediction
from router.strategy import Strategy

Prefer = Literal["quality", "balanced", "speed"]
Priority = Literal["latency", "accuracy"]


@dataclass(frozen=True)
class Arm:
    """What the router chooses among: a public model served with a decoding strategy.

    ``name`` is unique across the deployment; ``model`` is the name clients use (several arms
    may share it); ``strategy`` says how the arm decodes.
    """

    name: str
    model: str
    strategy: Strategy


@dataclass(frozen=True)
class ArmState:
    """Live view of one arm, built by the caller at decision time.

    ``healthy``: at least one backend of the arm can take a request. ``load``: outstanding
    requests per healthy backend (>= 0; running + queued, as the caller measures it).
    ``ttft_s`` / ``tokens_per_s``: recent measurements (means), ``None`` until there are some.
    ``ttft_ratio`` / ``speed_ratio``: how the arm's recent streams compared with their forecasts
    (measured ÷ forecast TTFT and decode speed, the forecasts made at the load of the time), ``None``
    until there are recent ones: a ratio, not a speed, so it does not depend on which prompts the
    arm happened to serve.
    """

    arm: Arm
    healthy: bool = True
    load: float = 0.0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    ttft_ratio: float | None = None
    speed_ratio: float | None = None


@dataclass(frozen=True)
class RouteFlags:
    """The caller's wishes. Every field is optional; ``None`` means "no constraint".

    ``accuracy`` is a probability floor in [0, 1] or a named level (``low``/``medium``/``high``)
    that the policy maps to a calibrated floor. ``arm`` pins one arm. ``strict``: refuse
    (:class:`RouteUnmeetable`) rather than answer outside the flags. ``priority``: which flag wins
    when no arm meets both the accuracy floor and the latency budget (the policy's default:
    ``latency``).
    """

    accuracy: float | str | None = None
    max_latency_ms: int | None = None
    max_ttft_ms: int | None = None
    prefer: Prefer | None = None
    arm: str | None = None
    strict: bool = False
    priority: Priority | None = None


@dataclass(frozen=True)
class RouteRequest:
    """One request to route: the prompt text (chat messages flattened) and the flags."""

    prompt: str = ""
    flags: RouteFlags = field(default_factory=RouteFlags)
    max_tokens: int | None = None
    features: Any = None  # what Policy.featurize returned for this prompt, if the policy needs it


@dataclass(frozen=True)
class Decision:
    """The chosen arm and why.

    ``reason`` is a short, low-cardinality label (it becomes a metric label and the
    ``x-route-reason`` header), e.g. ``pinned``, ``single-arm``, ``least-loaded``.
    ``ranked`` lists every candidate arm name in the order the policy preferred them, so the
    caller can fail over to the next arm without asking again. ``predictions`` (learned
    policies only) holds each candidate's forecast; ``explanation`` is a sentence for humans.
    ``propensity``: the probability the policy had of choosing ``arm`` (1 for a deterministic
    choice; less when the policy explores), what off-policy learning weighs a logged outcome by.
    ``family``: which of the artifact's task families the prompt most likely belongs to
    (:mod:`router.families`), for per-family metrics; ``None`` when the policy has no classifier.
    """

    arm: Arm
    reason: str
    ranked: tuple[Arm, ...] = ()
    predictions: Mapping[str, Prediction] = field(default_factory=dict)
    explanation: str = ""
    propensity: float = 1.0
    family: str | None = None  # the prompt's most likely task family (learned policies with one; reporting only)


class NoArmAvailable(Exception):
    """No candidate arm can take the request (all unhealthy, or none given)."""


class RouteUnmeetable(Exception):
    """``route.strict`` was set and no healthy arm is predicted to meet the flags.

    ``param`` names the flag that cannot be met (``route.max_latency_ms``, ``route.max_ttft_ms``
    or ``route.accuracy``); raised before any generation, so nothing was spent.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
