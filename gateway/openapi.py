"""The gateway's OpenAPI document: the real request models, routing flags, errors and security.

The generation routes read their body themselves (size cap, exact JSON passed upstream), so
FastAPI cannot infer their schema; :func:`document_openapi` adds it to the generated document
without changing how requests are handled: request bodies from :mod:`gateway.protocol`, the
``route`` field and ``x-route-*`` headers, every error status with OpenAI's envelope, and, when
API keys are configured, the ``Authorization: Bearer`` / ``x-api-key`` security schemes.

The document lists the deployment's public models and arm names. With API keys configured,
``/openapi.json``, ``/docs`` and ``/redoc`` need a key (:func:`schema_routes`) and the document
served lists only the caller's models and their arms (:func:`trimmed`), as ``/v1/models`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, JSONResponse

from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ErrorResponse, FeedbackRequest
from router.flags import HEADERS

_REF = "#/components/schemas/{model}"
_GENERATION = {"/v1/chat/completions": "ChatCompletionRequest", "/v1/completions": "CompletionRequest"}
_ERRORS = {
    "400": "Invalid request (the param is named) or over a cap (limits.*)",
    "404": "Unknown model, or one the API key may not use",
    "413": "Body larger than server.max_body_bytes",
    "502": "Upstream failed",
    "503": "No healthy backend (Retry-After)",
    "504": "Upstream timed out",
}
_AUTH_ERRORS = {
    "401": "Missing or wrong API key (WWW-Authenticate)",
    "429": "The key's requests or tokens per minute are spent (Retry-After)",
}


class RouteOptions(BaseModel):
    """Routing flags (body field ``route``); the same as the ``x-route-*`` headers, which it overrides."""

    model_config = ConfigDict(extra="forbid")

    accuracy: Literal["low", "medium", "high"] | float | None = Field(
        None, description="Named level or a number in [0, 1]", ge=0, le=1
    )
    max_latency_ms: int | None = Field(None, gt=0)
    max_ttft_ms: int | None = Field(None, gt=0)
    prefer: Literal["quality", "balanced", "speed"] | None = None
    arm: str | None = Field(None, min_length=1, description="Pin an arm of the requested model")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _components(schema: dict[str, Any], models: list[str], arms: list[str]) -> None:
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (
        ChatCompletionRequest,
        CompletionRequest,
        EmbeddingRequest,
        ErrorResponse,
        RouteOptions,
        FeedbackRequest,
    ):
        doc = model.model_json_schema(ref_template=_REF)
        components.update(doc.pop("$defs", {}))
        components[model.__name__] = doc
    for name in _GENERATION.values():
        properties = components[name].setdefault("properties", {})
        properties["route"] = _ref("RouteOptions")
        properties["model"]["enum"] = models  # this deployment's public models
    components["RouteOptions"]["properties"]["arm"] = {
        "anyOf": [{"enum": arms}, {"type": "null"}],
        "description": "Pin an arm of the requested model",
    }


def _errors(codes: dict[str, str]) -> dict[str, Any]:
    content = {"application/json": {"schema": _ref("ErrorResponse")}}
    return {code: {"description": text, "content": content} for code, text in codes.items()}


def document_openapi(app: FastAPI, auth: bool, models: list[str], arms: list[str]) -> None:
    """Replace ``app.openapi`` with a generator that documents the real request handling.

    ``models``/``arms``: this deployment's public model and arm names, listed in the schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        _components(schema, models, arms)
        paths = schema["paths"]
        headers = [
            {"name": h, "in": "header", "required": False, "schema": {"type": "string"}, "description": f"= route.{f}"}
            for f, h in HEADERS.items()
        ]
        bodies = {
            **{p: _ref(m) for p, m in _GENERATION.items()},
            "/v1/route": {"anyOf": list(map(_ref, _GENERATION.values()))},
        }
        fb = paths["/v1/feedback"]["post"]
        fb["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref("FeedbackRequest")}}}
        fb["responses"].update(
            _errors(
                {
                    "400": "Invalid rating",
                    "404": "Feedback recording is off, or no answer with this id is known for this key",
                    "413": "Body larger than 32 KiB",
                    "429": "The caller's feedback budget is spent (Retry-After)",
                }
            )
        )
        emb = paths["/v1/embeddings"]["post"]
        emb["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref("EmbeddingRequest")}}}
        emb["responses"].update(
            _errors({**_ERRORS, "404": "No arm serves embeddings for this model (arms[].endpoints)"})
        )
        retrieve = paths["/v1/models/{model_id}"]["get"]["responses"]
        retrieve.pop("422", None)  # a path parameter is never refused: any other id is a 404
        retrieve.update(_errors({"404": "Not a public model of this deployment (or not one the API key may use)"}))
        for path, body in bodies.items():
            op = paths[path]["post"]
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            op["parameters"] = [*op.get("parameters", []), *headers]
            op["responses"].update(_errors(_ERRORS))
            if path in _GENERATION:
                op["responses"]["200"] = {
                    "description": "The upstream answer (JSON), or an SSE stream when stream is true",
                    "content": {"application/json": {"schema": {}}, "text/event-stream": {"schema": {}}},
                }
        if auth:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            }
            for path, item in paths.items():
                if path.startswith("/v1/"):
                    for op in item.values():
                        op["security"] = [{"bearer": []}, {"apiKeyHeader": []}]
                        op["responses"].update(_errors(_AUTH_ERRORS))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def trimmed(schema: dict[str, Any], models: list[str], arms: list[str]) -> dict[str, Any]:
    """A copy of the whole document that lists only ``models`` and ``arms`` (a key's)."""
    doc = copy.deepcopy(schema)
    components = doc["components"]["schemas"]
    for name in _GENERATION.values():
        components[name]["properties"]["model"]["enum"] = models
    components["RouteOptions"]["properties"]["arm"]["anyOf"][0]["enum"] = arms
    return doc


def schema_routes(
    app: FastAPI, caller: Callable[[Request], Any], visible: Callable[[Any], tuple[list[str], list[str]]]
) -> None:
    """With API keys on: ``/openapi.json``, ``/docs`` and ``/redoc`` need a key (401 otherwise) and the
    document lists ``visible(key)`` = (models, arms) only; one trimmed copy is kept per key name.
    (FastAPI's own routes must be off: ``FastAPI(openapi_url=None, docs_url=None, redoc_url=None)``.)"""
    cache: dict[str, dict[str, Any]] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(request: Request) -> JSONResponse:
        key = caller(request)
        doc = cache.get(key.name)
        if doc is None:
            doc = cache[key.name] = trimmed(app.openapi(), *visible(key))
        return JSONResponse(doc)

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        caller(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        caller(request)
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")
