"""Upstream backends: their health and load, and the least-loaded choice within a pool.

A background task polls every backend's ``/health`` (``backends[].health_path``) and, for vLLM
servers, the load gauges on ``/metrics`` (``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc``). Request handlers report failures as they see them
(:meth:`BackendPool.report_failure`): a refused connection takes a backend out at once; timeouts
and 5xx take it out after ``health.unhealthy_after`` in a row. A backend that is down comes back
when its ``/health`` passes again.

Independently of ``/health``, each backend has a circuit breaker fed only by the request path: after
``health.breaker_after`` request failures in a row (refused or timed-out connects, timeouts, broken or
malformed answers; not 4xx/5xx, which clients can provoke) it *opens* for ``health.breaker_cooldown_s``
and no request is sent to it, then it is *half-open*: one trial request decides (an answer closes it,
a failure opens it for another cool-down). A backend that answers ``/health`` but hangs on requests
therefore leaves service. While a backend's last request failed less than a cool-down ago, the
least-loaded choice prefers every backend without such a failure, whatever the loads. A backend that refused a
connection or failed a health check, and then answers ``/health`` again (a restart), starts afresh:
breaker closed, no failure held against it.

All methods run on the event loop; none blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from gateway.affinity import Affinity
from gateway.metrics import GatewayMetrics
from gateway.settings import BackendSettings, HealthSettings
from gateway.upstream import Upstream, UpstreamIOError, UpstreamTimeout

log = logging.getLogger("gateway.backends")

#: Failure kinds (see :mod:`gateway.upstream`, :mod:`gateway.relay`) that count towards the breaker.
BREAKER_KINDS = frozenset({"connect", "connect_timeout", "timeout", "stream", "protocol"})

_GAUGES = {
    b"vllm:num_requests_running": "running",
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:kv_cache_usage_perc": "kv_usage",
    b"vllm:gpu_cache_usage_perc": "kv_usage_legacy",  # the name before vLLM 0.10; used only without the new one
}


class Backend:
    """One upstream server and what the gateway knows about it now."""

    __slots__ = (
        "_inflight_gauge",
        "auth_header",
        "base_url",
        "checked_at",
        "failed_at",
        "failures",
        "healthy",
        "inflight",
        "kv_usage",
        "last_error",
        "name",
        "open_until",
        "probing",
        "request_failures",
        "running",
        "served_at",
        "settings",
        "unreachable",
        "waiting",
    )

    def __init__(self, settings: BackendSettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.name = settings.name
        self.base_url = settings.base_url
        self.healthy = False
        self.failures = 0
        self.running = 0.0
        self.waiting = 0.0
        self.kv_usage = 0.0
        self.inflight = 0
        self.checked_at = 0.0
        self.served_at = 0.0  # last request it answered in full (monotonic)
        self.last_error: str | None = None
        self.request_failures = 0  # request-path failures in a row (never reset by /health)
        self.failed_at = 0.0  # last request-path failure (monotonic)
        self.open_until = 0.0  # breaker: 0 closed; else open until then, half-open after
        self.probing = False  # half-open: the one trial request is in flight
        self.unreachable = False  # refused, or a health check failed, since it was last up (it died)
        self._inflight_gauge = metrics.inflight(self.name)
        self.auth_header = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    @property
    def load(self) -> float:
        """Outstanding work: our own in-flight count (fresh) or the scraped running count (includes
        other clients; stale by up to one poll), whichever is larger, plus the upstream queue, with
        KV-cache use as a tie-breaker."""
        return max(float(self.inflight), self.running) + self.waiting + self.kv_usage

    def acquire(self) -> None:
        self.inflight += 1
        self._inflight_gauge.inc()

    def release(self) -> None:
        self.inflight -= 1
        self._inflight_gauge.dec()
        self.probing = False  # a trial that ended without a verdict (4xx, client gone): allow another

    def breaker(self, now: float) -> str:
        """``closed``, ``open`` (no request may go) or ``half_open`` (one trial request may go)."""
        if not self.open_until:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def usable(self, now: float) -> bool:
        """Healthy, and its breaker lets a request through now."""
        if not self.healthy:
            return False
        state = self.breaker(now)
        return state == "closed" or (state == "half_open" and not self.probing)


def parse_vllm_load(text: bytes) -> dict[str, float]:
    """Sum vLLM's load gauges over all label sets in a Prometheus text exposition.

    Only the load gauges' lines are looked at (a vLLM exposition is ~50 KB, mostly other
    series): each name is searched for at line starts rather than every line split and compared.
    """
    out: dict[str, float] = {}
    for name, field in _GAUGES.items():
        at_line = b"\n" + name
        pos = 0 if text.startswith(name) else text.find(at_line) + 1 or -1
        while pos > -1:
            end = text.find(b"\n", pos)
            if end < 0:
                end = len(text)
            line = text[pos:end]
            pos = text.find(at_line, end) + 1 or -1
            if line[len(name) : len(name) + 1] not in (b"{", b" "):
                continue  # a longer name (vllm:num_requests_running_total) or a bare name
            try:
                out[field] = out.get(field, 0.0) + float(line.rsplit(b" ", 1)[1])
            except (IndexError, ValueError):
                continue
    legacy = out.pop("kv_usage_legacy", None)
    if legacy is not None and "kv_usage" not in out:
        out["kv_usage"] = legacy
    return out


class BackendPool:
    """All backends, their health loop, and the choice of a backend for a request."""

    def __init__(
        self,
        backends: Iterable[BackendSettings],
        health: HealthSettings,
        upstream: Upstream,
        metrics: GatewayMetrics,
    ) -> None:
        self._metrics = metrics
        self._upstream = upstream
        self._health = health
        self.backends: dict[str, Backend] = {b.name: Backend(b, metrics) for b in backends}
        self._task: asyncio.Task[None] | None = None
        for name in self.backends:
            metrics.set_backend_up(name, False)
            metrics.set_breaker_open(name, False)

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends.values())

    def choose(
        self,
        names: Iterable[str],
        exclude: set[str] = frozenset(),  # type: ignore[assignment]
        affinity: Affinity | None = None,
    ) -> Backend | None:
        """The usable backend (healthy, breaker not open) with the least load among ``names``, skipping
        ``exclude``; one whose last request failed within a cool-down comes after all others.

        Ties go to the first in the order given. ``None`` if none is usable. Choosing a half-open
        backend makes this request its trial. With ``affinity``, the key's replica on the arm's ring
        comes first while it is usable, closed, not suspect and within the load bound
        (:mod:`gateway.affinity`); ``affinity.kept`` says whether it was.
        """
        now = time.monotonic()
        if affinity is not None:
            loads = {
                n: b.load
                for n in names
                if n not in exclude
                and (b := self.backends[n]).usable(now)
                and b.breaker(now) == "closed"
                and not self._suspect(b, now)
            }
            home = affinity.ring.pick(affinity.key, loads, affinity.load_factor)
            affinity.kept = home is not None
            if home is not None:
                return self.backends[home]
        best: Backend | None = None
        best_key = (True, 0.0)
        for name in names:
            b = self.backends[name]
            if name in exclude or not b.usable(now):
                continue
            key = (b.breaker(now) == "closed" and self._suspect(b, now), b.load)
            if best is None or key < best_key:
                best, best_key = b, key
        if best is not None and best.breaker(now) == "half_open":
            best.probing = True
            log.info("backend %s: breaker half-open, sending one trial request", best.name)
        return best

    def _suspect(self, backend: Backend, now: float) -> bool:
        return backend.request_failures > 0 and now - backend.failed_at < self._health.breaker_cooldown_s

    def usable(self, name: str) -> bool:
        """Whether a request may go to backend ``name`` now (healthy, breaker not open)."""
        return self.backends[name].usable(time.monotonic())

    def report_failure(self, backend: Backend, kind: str, detail: str = "") -> None:
        """Record a failure seen while serving; ``kind`` is a metric label (connect, timeout, ...)."""
        self._metrics.upstream_error(backend.name, kind)
        backend.last_error = f"{kind}: {detail}" if detail else kind
        backend.failures += 1
        if kind == "connect" or backend.failures >= self._health.unhealthy_after:
            self._set_health(backend, False)
        if kind == "connect":
            backend.unreachable = True  # refused: nothing listens there (it died), as a failed health check says
        backend.probing = False
        if kind in BREAKER_KINDS:
            now = time.monotonic()
            backend.request_failures += 1
            backend.failed_at = now
            if backend.open_until or backend.request_failures >= self._health.breaker_after:
                # tripped, or a trial (or a request sent before it tripped) failed: (re)open
                backend.open_until = now + self._health.breaker_cooldown_s
                self._metrics.set_breaker_open(backend.name, True)
                log.warning(
                    "backend %s: breaker OPEN for %.1f s after %d request failures in a row (%s)",
                    backend.name,
                    self._health.breaker_cooldown_s,
                    backend.request_failures,
                    backend.last_error,
                )

    def report_success(self, backend: Backend) -> None:
        backend.failures = 0
        backend.request_failures = 0
        backend.probing = False
        backend.served_at = time.monotonic()
        if backend.open_until:
            backend.open_until = 0.0
            self._metrics.set_breaker_open(backend.name, False)
            log.info("backend %s: breaker closed (a request succeeded)", backend.name)

    def _set_health(self, backend: Backend, up: bool) -> None:
        if backend.healthy != up:
            if up:
                log.info("backend %s is up", backend.name)
                if backend.unreachable:
                    # The health checks saw it gone, and now it answers: a new process. The request
                    # failures before were the old one dying, so its breaker starts closed and it competes
                    # by load at once. One that fails requests while /health passes is never unreachable,
                    # so this never clears its breaker.
                    backend.unreachable = False
                    backend.failed_at = 0.0
                    backend.request_failures = 0
                    if backend.open_until:
                        backend.open_until = 0.0
                        self._metrics.set_breaker_open(backend.name, False)
            else:
                log.warning("backend %s is DOWN (%s)", backend.name, backend.last_error)
        backend.healthy = up
        self._metrics.set_backend_up(backend.name, up)

    async def check(self, backend: Backend) -> None:
        """One health check (and load scrape) of ``backend``; never raises."""
        timeout = self._health.timeout_s
        try:
            path = backend.settings.health_path
            status, _ = await self._upstream.get(backend.base_url + path, backend.auth_header, timeout)
            ok = status == 200
            if not ok:
                backend.last_error = f"{path} returned {status}"
            if ok and backend.settings.scrape_metrics:
                status, content = await self._upstream.get(backend.base_url + "/metrics", backend.auth_header, timeout)
                if status == 200:
                    load = parse_vllm_load(content)
                    backend.running = load.get("running", 0.0)
                    backend.waiting = load.get("waiting", 0.0)
                    backend.kv_usage = load.get("kv_usage", 0.0)
        except UpstreamTimeout as exc:
            ok = False
            backend.last_error = f"health check: {exc.detail}"
            if backend.healthy and backend.served_at > backend.checked_at:
                # It answered a request since the last check: a slow health check is more likely our
                # own CPU starvation than a dead backend; do not turn our overload into 503s.
                backend.checked_at = time.monotonic()
                return
        except UpstreamIOError as exc:
            ok = False
            backend.last_error = f"health check: {exc.detail}"
        backend.checked_at = time.monotonic()
        if ok:
            backend.failures = 0
            self._set_health(backend, True)
        else:
            backend.failures += 1
            if backend.failures >= self._health.unhealthy_after or not backend.healthy:
                self._set_health(backend, False)
                backend.unreachable = True

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(b) for b in self.backends.values()))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._health.interval_s)
            await self.check_all()

    async def start(self) -> None:
        """Check every backend once (so the first request sees real health), then poll."""
        await self.check_all()
        self._task = asyncio.create_task(self._loop(), name="backend-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
