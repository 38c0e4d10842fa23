"""The ASGI application: ``create_app(settings)`` wires settings, client, pool, router and routes.

Routes only dispatch; the logic lives in :mod:`gateway.serving` (its module docstring draws a
request's path). Every error leaves as an OpenAI envelope, including framework 404/405 and
unexpected exceptions (logged, never shown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.arms import ArmCatalog
from gateway.auth import ApiKey, KeyStore
from gateway.backends import BackendPool
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound, Unauthorized, error_response
from gateway.lean_app import GatewayApp, internal_error
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.openapi import document_openapi, schema_routes
from gateway.protocol import ModelCard, ModelList
from gateway.serving import Proxy
from gateway.settings import Settings
from gateway.tracing import Tracer, build_tracer
from gateway.upstream import build_upstream

log = logging.getLogger("gateway.app")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def create_app(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
    metrics: GatewayMetrics | None = None,
    tracer: Tracer | None = None,
) -> FastAPI:
    """Build the gateway app. ``transport`` replaces the network for tests (e.g. ``httpx.MockTransport``);
    without it the upstream client is the one ``server.upstream_client`` names (aiohttp, or the gateway's own:
    :func:`gateway.upstream.build_upstream`). ``tracer``: default
    from ``settings.tracing`` (:mod:`gateway.tracing`; shut down, its spans flushed, with the app)."""
    metrics = metrics or GatewayMetrics()
    metrics.known_labels([b.name for b in settings.backends], [k.name for k in settings.auth.keys])
    catalog = ArmCatalog(settings)
    for live in catalog.arms.values():
        # Export every arm's series at zero from the start: a histogram or counter whose first sample
        # already holds its first request shows no increase to rate(), so dashboards would miss it.
        metrics.series(live.arm.model, live.strategy_label)
        for backend in live.backends:
            metrics.arm_info(live.arm.name, live.arm.model, live.strategy_label, backend)
    policy = settings.routing.build([live.arm for live in catalog.generation_arms()])
    metrics.known_families(
        policy.task_families, {(live.arm.model, live.strategy_label) for live in catalog.generation_arms()}
    )
    upstream = build_upstream(settings, transport)
    pool = BackendPool(settings.backends, settings.health, upstream, metrics)
    tracer = tracer or build_tracer(settings.tracing)
    proxy = Proxy(settings, upstream, pool, catalog, policy, metrics, tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upstream.start()
        await pool.start()
        healthy = [b.name for b in pool.backends.values() if b.healthy]
        log.info("gateway ready: %d arms, healthy backends: %s", len(catalog.arms), ", ".join(healthy) or "none")
        try:
            yield
        finally:
            await pool.stop()
            await upstream.aclose()
            await asyncio.to_thread(tracer.shutdown)

    keys = KeyStore(settings.auth)
    pages: dict[str, Any] = {"openapi_url": None, "docs_url": None, "redoc_url": None} if keys.enabled else {}
    app = GatewayApp(
        title="llm-gateway",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible gateway that routes each request to a model and decoding strategy.",
        **pages,  # with keys, the schema pages are the gateway's own (gateway.openapi.schema_routes)
    )
    app.state.settings, app.state.pool, app.state.catalog, app.state.metrics = settings, pool, catalog, metrics
    app.state.proxy = proxy
    app.state.draining = False  # set on SIGTERM by gateway.server: /ready answers 503 from then on
    document_openapi(app, auth=keys.enabled, models=catalog.public_models(), arms=list(catalog.arms))
    if keys.enabled:
        schema_routes(app, _caller(keys, metrics), lambda key: _visible_to(catalog, key))

    _error_handlers(app)
    _generation_routes(app, proxy, keys)
    _service_routes(app, keys, settings, pool, catalog, metrics)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI envelope, framework 404/405 and unexpected exceptions included."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = f"no route for {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        err = GatewayError(str(detail), code="not_found" if exc.status_code == 404 else None)
        err.status, err.type = exc.status_code, "invalid_request_error"
        return error_response(err, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(InvalidRequest(str(first.get("msg", "invalid request")), param=param))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return internal_error(request)


def _visible_to(catalog: ArmCatalog, key: ApiKey) -> tuple[list[str], list[str]]:
    """The public models and the arm names ``key`` may use."""
    return key.visible(catalog.public_models()), [n for n, live in catalog.arms.items() if key.allows(live.arm.model)]


def _caller(keys: KeyStore, metrics: GatewayMetrics) -> Callable[[Request], ApiKey | None]:
    def caller(request: Request) -> ApiKey | None:
        """The request's API key (``None`` when auth is off); raises 401 before the body is read."""
        try:
            return keys.authenticate(request.headers)
        except Unauthorized:
            metrics.rejected("unauthorized", None)
            raise

    return caller


def _generation_routes(app: GatewayApp, proxy: Proxy, keys: KeyStore) -> None:
    """The OpenAI-compatible generation endpoints, the dry run and feedback: dispatch to :class:`Proxy`.
    Chat and text completions are also served beneath FastAPI (:mod:`gateway.lean_app`)."""
    caller = _caller(keys, app.state.metrics)

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible), streaming or not")
    async def chat_completions(request: Request) -> Response:
        return await proxy.handle("chat", request, caller(request))

    @app.post("/v1/completions", summary="Text completion (OpenAI-compatible), streaming or not")
    async def completions(request: Request) -> Response:
        return await proxy.handle("completions", request, caller(request))

    app.serve_directly("/v1/chat/completions", chat_completions)
    app.serve_directly("/v1/completions", completions)

    @app.post("/v1/embeddings", summary="Embeddings (OpenAI-compatible), from an arm that serves them")
    async def embeddings(request: Request) -> Response:
        return await proxy.handle("embeddings", request, caller(request))

    @app.post("/v1/route", summary="Dry run: which arm would answer this chat/completion body, and why")
    async def route(request: Request) -> Response:
        return await proxy.dry_run(request, caller(request))

    @app.post("/v1/feedback", summary="Rate an answer by its id; recorded as JSONL with its routing decision")
    async def feedback(request: Request) -> Response:
        return await proxy.feedback(request, caller(request))


def _service_routes(
    app: FastAPI, keys: KeyStore, settings: Settings, pool: BackendPool, catalog: ArmCatalog, metrics: GatewayMetrics
) -> None:
    """Models, liveness, readiness and metrics."""
    caller = _caller(keys, metrics)

    def visible(key: ApiKey | None) -> list[str]:
        return catalog.public_models() if key is None else key.visible(catalog.public_models())

    @app.get("/v1/models", summary="Public models, plus 'auto' (the router chooses)")
    async def models(request: Request) -> Response:
        cards = [ModelCard(id=m, created=catalog.created) for m in visible(caller(request))]
        return _json(ModelList(data=cards).model_dump())

    @app.get(
        "/v1/models/{model_id:path}",
        summary="One public model, or 'auto'; 404 model_not_found for any other (or one the key may not use)",
    )
    async def model(model_id: str, request: Request) -> Response:
        public = visible(caller(request))
        if model_id not in public:
            raise ModelNotFound(
                f"The model '{model_id}' does not exist; available: " + ", ".join(public), param="model"
            )
        return _json(ModelCard(id=model_id, created=catalog.created).model_dump())

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/ready", summary="Readiness: at least one backend is healthy and the gateway is not draining")
    async def ready() -> Response:
        now = time.monotonic()
        backends = {
            b.name: {
                "healthy": b.healthy,
                "breaker": b.breaker(now),
                "load": b.load,
                "inflight": b.inflight,
                "error": b.last_error,
            }
            for b in pool.backends.values()
        }
        draining = bool(app.state.draining)
        ok = pool.any_healthy() and not draining
        return _json(
            {"ready": ok, "draining": draining, "backends": backends},
            200 if ok else 503,
            None if ok else {"retry-after": str(settings.timeouts.retry_after_s)},
        )

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)
