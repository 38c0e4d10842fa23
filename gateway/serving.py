"""Serving ``/v1/chat/completions`` and ``/v1/completions``: validate, route, forward, relay.

The request's own JSON goes upstream with two changes only: ``model`` becomes the backend's
``served_model`` and, for streams, ``stream_options.include_usage`` is forced on so token
counts are always known (the usage chunk is removed again when the client did not ask for it).

Before the first byte reaches the client, a connection failure, timeout, 5xx or broken read
is retried on the next least-loaded backend of the arm, then of the next-ranked arm, up to
``max_attempts``. After the first byte, failures are reported in-stream (see :mod:`relay`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.arms import ArmCatalog, LiveArm
from gateway.backends import Backend, BackendPool
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyBackend,
    PayloadTooLarge,
    UpstreamError,
    UpstreamHTTPError,
    error_response,
)
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, CompletionRequest, prompt_text
from gateway.relay import RelayResponse, StreamOutcome
from gateway.settings import Settings
from router import Decision, FlagError, NoArmAvailable, Policy, RouteFlags, RouteRequest, parse_flags

log = logging.getLogger("gateway.serving")

Endpoint = Literal["chat", "completions"]
_PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_MODELS: dict[str, type[BaseModel]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
_UNKNOWN = "unknown"
_NONE = "none"


def _param(loc: tuple[int | str, ...], body: Any, missing: bool) -> str | None:
    """``loc`` as the client wrote it: pydantic's union-member tags (``prompt.list[int]``) dropped."""
    parts: list[str] = []
    node = body
    for i, part in enumerate(loc):
        if isinstance(node, dict) and (part in node or (missing and i == len(loc) - 1)):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        parts.append(str(part))
    return ".".join(parts) or None


def _validation_error(exc: ValidationError, body: dict[str, Any]) -> InvalidRequest:
    err = exc.errors()[0]
    param = _param(err["loc"], body, err["type"] == "missing")
    msg = err["msg"]
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return InvalidRequest(f"{param}: {msg}{suffix}" if param else msg + suffix, param=param)


class Proxy:
    """Forwards generation requests. One instance per app; safe for concurrent requests."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        pool: BackendPool,
        catalog: ArmCatalog,
        policy: Policy,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.catalog = catalog
        self.policy = policy
        self.metrics = metrics
        t = settings.timeouts
        self._timeout_stream = httpx.Timeout(connect=t.connect_s, read=t.idle_s, write=t.connect_s, pool=t.connect_s)
        self._timeout_once = httpx.Timeout(
            connect=t.connect_s, read=t.first_byte_s, write=t.connect_s, pool=t.connect_s
        )

    async def _read_body(self, request: Request) -> dict[str, Any]:
        limit = self.settings.server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            raise InvalidRequest("request body is empty; expected a JSON object")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        return body

    def _flags(self, body: dict[str, Any], request: Request, arms: list[LiveArm]) -> RouteFlags:
        """Parse (and remove from the body) the caller's routing flags; check a pinned arm."""
        try:
            flags = parse_flags(body.pop("route", None), request.headers)
        except FlagError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        if flags.arm is not None and not any(a.arm.name == flags.arm for a in arms):
            param = "route.arm" if flags.arm not in self.catalog.arms else "model"
            raise InvalidRequest(
                f"unknown arm '{flags.arm}' for model '{body['model']}'; arms: " + ", ".join(a.arm.name for a in arms),
                param=param,
            )
        return flags

    async def _decide(
        self, body: dict[str, Any], arms: list[LiveArm], flags: RouteFlags, record: bool = True
    ) -> Decision:
        started = time.perf_counter()
        prompt, features = "", None
        if self.policy.needs_features and flags.arm is None and len(arms) > 1:
            prompt = prompt_text(body)
            features = await asyncio.to_thread(self.policy.featurize, prompt)  # encoder: keep it off the loop
        req = RouteRequest(prompt=prompt, flags=flags, max_tokens=body.get("max_tokens"), features=features)
        try:
            decision = self.policy.decide(req, self.catalog.states(arms, self.pool))
        except NoArmAvailable as exc:
            raise NoHealthyBackend(
                f"no healthy backend for model '{body['model']}': {exc}",
                headers={"retry-after": str(self.settings.timeouts.retry_after_s)},
            ) from None
        if record:
            self.metrics.decision(
                decision.arm.model, decision.arm.strategy.label, decision.reason, time.perf_counter() - started
            )
        return decision

    async def _route(
        self, endpoint: Endpoint, request: Request, body: dict[str, Any] | None = None, record: bool = True
    ) -> tuple[dict[str, Any], Decision]:
        if body is None:
            body = await self._read_body(request)
        try:
            _MODELS[endpoint].model_validate(body)
        except ValidationError as exc:
            raise _validation_error(exc, body) from None
        arms = self.catalog.candidates(body["model"])
        if arms is None:
            raise ModelNotFound(
                f"The model '{body['model']}' does not exist; available: " + ", ".join(self.catalog.public_models()),
                param="model",
            )
        return body, await self._decide(body, arms, self._flags(body, request, arms), record)

    async def dry_run(self, request: Request) -> Response:
        """``POST /v1/route``: the decision for a chat or completion body, without calling any backend."""
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            endpoint: Endpoint = "completions" if "prompt" in body and "messages" not in body else "chat"
            _, decision = await self._route(endpoint, request, body, record=False)
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        live = self.catalog.arms[decision.arm.name]
        doc = {
            "arm": decision.arm.name,
            "model": decision.arm.model,
            "strategy": live.strategy_label,
            "backends": list(live.backends),
            "reason": decision.reason,
            "explanation": decision.explanation,
            "ranked": [a.name for a in decision.ranked],
            "predictions": {name: p.as_dict() for name, p in decision.predictions.items()},
            "decision_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return Response(orjson.dumps(doc), media_type="application/json")

    async def handle(self, endpoint: Endpoint, request: Request) -> Any:
        """Answer one request; every failure becomes an OpenAI error response (never raises)."""
        started = time.perf_counter()
        model_label, strategy_label = _UNKNOWN, _NONE
        try:
            body, decision = await self._route(endpoint, request)
            model_label, strategy_label = decision.arm.model, decision.arm.strategy.label
            return await self._forward(endpoint, body, decision, started)
        except GatewayError as exc:
            self.metrics.request_done(model_label, strategy_label, endpoint, exc.status)
            return error_response(exc)
        except ClientDisconnect:
            self.metrics.request_done(model_label, strategy_label, endpoint, 499)
            return Response(status_code=499)

    async def _send(self, backend: Backend, endpoint: Endpoint, payload: bytes, stream: bool) -> httpx.Response:
        req = self.client.build_request(
            "POST",
            backend.base_url + _PATHS[endpoint],
            content=payload,
            headers={"content-type": "application/json", **backend.auth_header},
            timeout=self._timeout_stream if stream else self._timeout_once,
        )
        return await self.client.send(req, stream=True)

    async def _forward(self, endpoint: Endpoint, body: dict[str, Any], decision: Decision, started: float) -> Any:
        stream = bool(body.get("stream"))
        client_opts = body.get("stream_options") or {}
        wants_usage = bool(client_opts.get("include_usage"))
        if stream:
            body["stream_options"] = {**client_opts, "include_usage": True}
        last_error: GatewayError | None = None
        tried: set[str] = set()
        attempts = 0
        for arm in decision.ranked or (decision.arm,):
            live = self.catalog.arms[arm.name]
            while attempts < self.settings.max_attempts:
                backend = self.pool.choose(live.backends, tried)
                if backend is None:
                    break
                tried.add(backend.name)
                attempts += 1
                body["model"] = backend.settings.served_model
                backend.acquire()
                try:
                    resp = await self._send(backend, endpoint, orjson.dumps(body), stream)
                except httpx.TimeoutException as exc:
                    backend.release()
                    kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
                    self.pool.report_failure(backend, kind, type(exc).__name__)
                    last_error = UpstreamError(
                        f"backend '{backend.name}' timed out ({type(exc).__name__})", kind="timeout", status=504
                    )
                    continue
                except httpx.HTTPError as exc:
                    backend.release()
                    kind = "connect" if isinstance(exc, httpx.ConnectError) else "protocol"
                    self.pool.report_failure(backend, kind, type(exc).__name__)
                    last_error = UpstreamError(f"backend '{backend.name}' failed: {type(exc).__name__}", kind=kind)
                    continue
                headers = {
                    "x-route-arm": live.arm.name,
                    "x-route-model": live.arm.model,
                    "x-route-strategy": live.strategy_label,
                    "x-route-backend": backend.name,
                    "x-route-reason": decision.reason if live.arm is decision.arm else "failover",
                }
                if resp.status_code >= 400:
                    try:
                        payload = await resp.aread()
                    except httpx.HTTPError:
                        payload = b""
                    finally:
                        await resp.aclose()
                        backend.release()
                    if resp.status_code >= 500:
                        self.pool.report_failure(backend, "http_5xx", str(resp.status_code))
                        last_error = UpstreamHTTPError(resp.status_code, payload)
                        continue
                    self.metrics.upstream_error(backend.name, "http_4xx")
                    raise _with_headers(UpstreamHTTPError(resp.status_code, payload), headers)
                if stream:
                    return self._relay(endpoint, live, backend, resp, headers, wants_usage, started)
                try:
                    return await self._complete(endpoint, live, backend, resp, headers, started)
                except UpstreamError as exc:
                    last_error = exc
                    continue
        if last_error is not None:
            raise last_error
        raise NoHealthyBackend(
            f"no healthy backend for model '{decision.arm.model}'",
            headers={"retry-after": str(self.settings.timeouts.retry_after_s)},
        )

    async def _complete(
        self,
        endpoint: Endpoint,
        live: LiveArm,
        backend: Backend,
        resp: httpx.Response,
        headers: dict[str, str],
        started: float,
    ) -> Response:
        try:
            content = await resp.aread()
        except httpx.HTTPError as exc:
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "stream"
            self.pool.report_failure(backend, kind, type(exc).__name__)
            raise UpstreamError(
                f"backend '{backend.name}' failed while answering: {type(exc).__name__}",
                kind=kind,
                status=504 if kind == "timeout" else 502,
            ) from None
        finally:
            await resp.aclose()
            backend.release()
        self.pool.report_success(backend)
        needle = b'"model":' + orjson.dumps(backend.settings.served_model)
        content = content.replace(needle, b'"model":' + orjson.dumps(live.arm.model), 1)
        series = self.metrics.series(live.arm.model, live.strategy_label)
        try:
            usage = orjson.loads(content).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError):
            usage = {}
        if isinstance(usage, dict):
            self.metrics.observe_usage(
                series, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
        series.duration.observe(time.perf_counter() - started)
        self.metrics.request_done(live.arm.model, live.strategy_label, endpoint, resp.status_code)
        return Response(
            content,
            status_code=resp.status_code,
            media_type=resp.headers.get("content-type", "application/json"),
            headers=headers,
        )

    def _relay(
        self,
        endpoint: Endpoint,
        live: LiveArm,
        backend: Backend,
        resp: httpx.Response,
        headers: dict[str, str],
        wants_usage: bool,
        started: float,
    ) -> RelayResponse:
        metrics = self.metrics
        series = metrics.series(live.arm.model, live.strategy_label)

        def done(out: StreamOutcome) -> None:
            backend.release()
            end = time.perf_counter()
            series.duration.observe(end - started)
            ttft = None
            if out.first_token_at is not None:
                ttft = out.first_token_at - started
                series.ttft.observe(ttft)
                for gap in out.itl:
                    series.itl.observe(gap)
            completion = 0
            if out.usage:
                completion = int(out.usage.get("completion_tokens") or 0)
                metrics.observe_usage(series, int(out.usage.get("prompt_tokens") or 0), completion)
            tps = None
            if completion > 1 and out.first_token_at is not None and out.last_token_at is not None:
                span = out.last_token_at - out.first_token_at
                if span > 0:
                    tps = (completion - 1) / span
                    series.tokens_per_s.observe(tps)
            if out.disconnected:
                status = 499
            elif out.error is not None:
                status = out.error.status
                self.pool.report_failure(backend, out.error.kind, out.error.message)
            else:
                status = 200
                self.pool.report_success(backend)
                live.record(ttft, tps)
            metrics.request_done(live.arm.model, live.strategy_label, endpoint, status)

        return RelayResponse(
            resp, headers, backend.settings.served_model, live.arm.model, strip_usage=not wants_usage, on_done=done
        )


def _with_headers(exc: GatewayError, headers: dict[str, str]) -> GatewayError:
    exc.headers.update(headers)
    return exc
