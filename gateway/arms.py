"""The arms a deployment serves: their router-facing description, their backend pools and live
per-arm measurements (TTFT and decode speed, and their ratios to the policy's forecasts, as
exponentially weighted means that expire).

A measurement stands for the arm's speed only while it is recent: one taken under a burst of load
must not keep an arm looking slow once the burst is over (nothing corrects it while the router,
believing it, sends the arm no traffic). After ``ttl_s`` without a new one the router falls back
to the arm's profiled speed, and the next measurement starts a new mean.

:class:`ArmCatalog` answers "which arms may serve model X" and builds the
:class:`router.ArmState` snapshots the router decides on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.affinity import Affinity, HashRing, request_key
from gateway.backends import BackendPool
from gateway.settings import AUTO_MODEL, AffinitySettings, Settings
from router import Arm, ArmState


class LiveArm:
    """One arm at run time: means of its recent streams' TTFT and decode speed, and of their ratios
    to the policy's forecasts (``None`` until measured; the ratios only where the policy forecast)."""

    __slots__ = (
        "affinity",
        "arm",
        "backends",
        "measured_at",
        "pending",
        "ring",
        "speed_ratio",
        "strategy_label",
        "tokens_per_s",
        "ttft_ratio",
        "ttft_s",
        "ttl_s",
    )

    ALPHA = 0.2

    def __init__(
        self, arm: Arm, backends: Sequence[str], ttl_s: float = 60.0, affinity: AffinitySettings | None = None
    ) -> None:
        self.arm = arm
        self.backends = tuple(backends)
        # affinity among several backends only (one backend: nothing to choose)
        on = affinity is not None and affinity.mode != "none" and len(self.backends) > 1
        self.affinity = affinity if on else None
        self.ring = HashRing(self.backends) if on else None
        self.pending = 0  # requests routed here and not yet sent to a backend (Exchange.sent)
        self.strategy_label = arm.strategy.label
        self.ttl_s = ttl_s
        self.ttft_s: float | None = None
        self.tokens_per_s: float | None = None
        self.ttft_ratio: float | None = None
        self.speed_ratio: float | None = None
        self.measured_at = -math.inf

    def affinity_for(self, session: str | None, body: Mapping[str, Any]) -> Affinity | None:
        """This request's affinity among the arm's backends (``session``: its ``x-session-id``), or
        ``None``: affinity off, or the request has no key under the arm's mode."""
        if self.ring is None or self.affinity is None:
            return None
        a = self.affinity
        key = request_key(a.mode, session, body, a.prefix_chars)
        return None if key is None else Affinity(self.ring, key, a.load_factor)

    def fresh(self, now: float) -> bool:
        """Whether the last measurement (at ``time.monotonic()`` = ``measured_at``) is recent enough to use."""
        return now - self.measured_at <= self.ttl_s

    def record(
        self,
        ttft_s: float | None,
        tokens_per_s: float | None,
        ratios: tuple[float | None, float | None] = (None, None),
        now: float | None = None,
    ) -> None:
        """Fold one finished stream's TTFT and decode speed, and their ratios to its forecast
        (:func:`gateway.accounting.live_ratios`), into the means (all restarted when stale)."""
        if ttft_s is None and tokens_per_s is None:
            return
        now = time.monotonic() if now is None else now
        if not self.fresh(now):
            self.ttft_s = self.tokens_per_s = self.ttft_ratio = self.speed_ratio = None
        self.measured_at = now
        self.ttft_s = _mean(self.ttft_s, ttft_s, self.ALPHA)
        self.tokens_per_s = _mean(self.tokens_per_s, tokens_per_s, self.ALPHA)
        self.ttft_ratio = _mean(self.ttft_ratio, ratios[0], self.ALPHA)
        self.speed_ratio = _mean(self.speed_ratio, ratios[1], self.ALPHA)


def _mean(prev: float | None, value: float | None, alpha: float) -> float | None:
    """One exponentially weighted step; the first value is taken as is, a missing one changes nothing."""
    if value is None:
        return prev
    return value if prev is None else (1 - alpha) * prev + alpha * value


class ArmCatalog:
    """Arms by name and by public model, in configuration order.

    ``arms`` holds every arm; ``by_model`` and :meth:`generation_arms` those that serve chat or text
    completions (the routing policy's arms); arms that serve ``embeddings`` (``arms[].endpoints``)
    are found by :meth:`candidates` for that endpoint and never by ``auto``. ``pinned_only`` arms
    (``arms[].pinned_only``) are left out of :meth:`generation_arms` and, by :meth:`routable`, of
    every choice a request does not pin.
    """

    def __init__(self, settings: Settings) -> None:
        self.arms: dict[str, LiveArm] = {}
        self.by_model: dict[str, list[LiveArm]] = {}
        self._serving: dict[str, dict[str, list[LiveArm]]] = {e: {} for e in ("chat", "completions", "embeddings")}
        self.pinned_only = frozenset(a.name for a in settings.arms if a.pinned_only)
        for a in settings.arms:
            arm = Arm(name=a.name, model=a.model, strategy=a.build_strategy())
            live = LiveArm(arm, a.backends, ttl_s=settings.routing.live_ttl_s, affinity=a.affinity)
            self.arms[a.name] = live
            if a.generates:
                self.by_model.setdefault(a.model, []).append(live)
            for endpoint in a.endpoints:
                self._serving[endpoint].setdefault(a.model, []).append(live)
        self.created = int(time.time())

    def generation_arms(self) -> list[LiveArm]:
        """The arms that serve chat or completions (configuration order): the routing policy's arms."""
        names = {live.arm.name for arms in self.by_model.values() for live in arms} - self.pinned_only
        return [live for name, live in self.arms.items() if name in names]

    def routable(self, arms: list[LiveArm], pinned: str | None) -> list[LiveArm]:
        """``arms`` less the pinned-only ones a request pinning ``pinned`` (an arm name, or ``None``) may not
        get: all of them unless it pins one, or unless they are all the model has (its name pins them)."""
        if not self.pinned_only or (pinned is not None and pinned in self.pinned_only):
            return arms
        kept = [live for live in arms if live.arm.name not in self.pinned_only]
        return kept if kept or pinned is not None else arms

    def needs_no_policy(self, arms: Sequence[LiveArm]) -> bool:
        """Whether ``arms`` (after :meth:`routable`) holds a pinned-only arm: the routing policy does not
        know it, so the choice is least-loaded (or the pin)."""
        return any(live.arm.name in self.pinned_only for live in arms)

    def public_models(self) -> list[str]:
        """Every public model (generation models first, then embedding models), and ``auto``."""
        return list(dict.fromkeys([*self.by_model, *self._serving["embeddings"], AUTO_MODEL]))

    def models_for(self, endpoint: str) -> list[str]:
        """The public models served on ``endpoint`` (``auto`` too for chat and completions)."""
        models = list(self._serving[endpoint])
        return models if endpoint == "embeddings" else [*models, AUTO_MODEL]

    def candidates(self, model: str, endpoint: str = "chat") -> list[LiveArm] | None:
        """Arms that may answer ``model`` on ``endpoint`` (for ``auto``: every arm serving it, except
        for embeddings, which need a named model); ``None`` when there are none."""
        serving = self._serving[endpoint]
        if model == AUTO_MODEL and endpoint != "embeddings":
            names = {live.arm.name for arms in serving.values() for live in arms}
            return [live for name, live in self.arms.items() if name in names] or None  # configuration order
        return serving.get(model)

    def states(self, arms: Sequence[LiveArm], pool: BackendPool) -> list[ArmState]:
        """Snapshot of each arm for the router: healthy if any backend is usable (healthy, breaker not
        open); load of its best usable backend plus the requests routed to it and not yet sent;
        measured speed only where it is fresh."""
        out = []
        now = time.monotonic()
        for live in arms:
            loads = [pool.backends[n].load for n in live.backends if pool.usable(n)]
            fresh = live.fresh(now)
            out.append(
                ArmState(
                    arm=live.arm,
                    healthy=bool(loads),
                    load=(min(loads) if loads else 0.0) + live.pending,
                    ttft_s=live.ttft_s if fresh else None,
                    tokens_per_s=live.tokens_per_s if fresh else None,
                    ttft_ratio=live.ttft_ratio if fresh else None,
                    speed_ratio=live.speed_ratio if fresh else None,
                )
            )
        return out
