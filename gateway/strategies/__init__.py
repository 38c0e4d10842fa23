"""Strategy executors: how the gateway runs an arm's decoding strategy, registered by name.

An :class:`Executor` answers one admitted :class:`gateway.admission.Exchange` routed to one of its
arms, using the shared :class:`Services`: it opens upstream calls (:mod:`gateway.calls`), returns a
whole response or a :class:`gateway.relay.RelayResponse`, and ends the exchange through
:mod:`gateway.accounting` when it answered. It raises a :class:`gateway.errors.GatewayError` when it
could not answer (the caller accounts for that). It never sees the HTTP request.

===========  =====================================  ======================================
executor     strategy kinds                         what it does
===========  =====================================  ======================================
``single``   ``plain``, ``speculative``,            one upstream call, retried on the next
             ``layer-skip``                         backend / ranked arm before the first byte
``pdr``      ``pdr``                                drafts → distill → refine
                                                    (:mod:`gateway.strategies.pdr_runner`)
===========  =====================================  ======================================

A new strategy that needs its own execution is one module here with a
``@register_executor("name", kinds=(...))`` class and its import in :func:`_load`. Start-up
(:func:`build_executors`) fails naming the arm when a configured strategy kind has no executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response

from gateway.accounting import Accounting
from gateway.admission import Exchange
from gateway.arms import ArmCatalog
from gateway.calls import Calls
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """What executors share: one per app."""

    settings: Settings
    catalog: ArmCatalog
    calls: Calls
    accounting: Accounting
    metrics: GatewayMetrics


class Executor(Protocol):
    """Runs one kind of strategy. ``run`` is called concurrently for many exchanges (no per-request
    state on the executor); cancelling it (the client left) must close what it opened."""

    async def run(self, ex: Exchange) -> Response:
        """Answer ``ex`` (admitted: ``body`` and ``decision`` set). Raises :class:`GatewayError`."""
        ...


ExecutorFactory = Callable[[Services], Executor]

_REGISTRY: dict[str, ExecutorFactory] = {}
_KINDS: dict[str, str] = {}


def register_executor(name: str, kinds: Iterable[str]) -> Callable[[ExecutorFactory], ExecutorFactory]:
    """Class decorator: register an executor under ``name`` for the strategy ``kinds`` it runs."""

    def wrap(factory: ExecutorFactory) -> ExecutorFactory:
        if name in _REGISTRY:
            raise ValueError(f"executor '{name}' registered twice")
        for kind in kinds:
            if kind in _KINDS:
                raise ValueError(f"strategy kind '{kind}' already runs on executor '{_KINDS[kind]}'")
            _KINDS[kind] = name
        _REGISTRY[name] = factory
        return factory

    return wrap


def _load() -> None:
    from gateway.strategies import pdr, single  # noqa: F401 - registers the executors


def build_executors(services: Services) -> dict[str, Executor]:
    """One executor per configured arm (by arm name); arms of one executor share its instance.
    Raises ``ValueError`` naming the arm whose strategy kind has no executor."""
    if not _REGISTRY:
        _load()
    instances: dict[str, Executor] = {}
    out: dict[str, Executor] = {}
    for name, live in services.catalog.arms.items():
        kind = live.arm.strategy.kind
        executor = _KINDS.get(kind)
        if executor is None:
            raise ValueError(
                f"arm '{name}': no executor runs strategy kind '{kind}'; executors run: " + ", ".join(sorted(_KINDS))
            )
        if executor not in instances:
            instances[executor] = _REGISTRY[executor](services)
        out[name] = instances[executor]
    return out
