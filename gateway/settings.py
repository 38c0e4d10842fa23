"""The gateway's typed settings: one object, built once in ``main()`` and passed down.

Sources, later wins: defaults < YAML file < environment variables ``GATEWAY_<KEY>`` with ``__``
between nesting levels and list indices, e.g. ``GATEWAY_SERVER__PORT=9000`` or
``GATEWAY_BACKENDS__0__URL=http://10.0.0.5:8000``. Values from the environment are parsed as
YAML scalars (``true``, ``2.5``, ``[a, b]``).

Everything is validated at start-up; :class:`SettingsError` carries messages that name the bad
key (``backends[1].url: ...``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from router import Arm, Policy, Strategy, StrategyError, available_policies, build_policy, build_strategy

ENV_PREFIX = "GATEWAY_"
AUTO_MODEL = "auto"


class SettingsError(ValueError):
    """The configuration is invalid; the message lists every problem with its key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: every log record one JSON line, and one per finished request (gateway/logs.py)."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="How long in-flight requests may finish on shutdown.")
    http_server: Literal["uvicorn", "granian"] = Field(
        "uvicorn",
        description="The HTTP server: uvicorn (uvloop, httptools), or granian (Rust; the 'granian' extra). "
        "Both drain the same way on SIGTERM (gateway/server.py).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Processes serving the port (SO_REUSEPORT). Each keeps its own rate-limit buckets, routing "
        "statistics, feedback memory, affinity tables and breakers; /metrics sums them (gateway/workers.py).",
    )
    upstream_client: Literal["aiohttp", "lean"] = Field(
        "lean",
        description="The HTTP client towards the backends: aiohttp, or lean (the gateway's own HTTP/1.1 client on "
        "asyncio and httptools: less CPU per streamed chunk; gateway/upstream_lean.py).",
    )


class BackendSettings(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: HttpUrl
    served_model: str = Field(min_length=1, description="The model name the upstream server answers to.")
    api_key: str | None = Field(None, description="Sent upstream as a Bearer token, if set.")
    scrape_metrics: bool = Field(True, description="Read vLLM load gauges from the upstream /metrics.")
    health_path: str = Field(
        "/health",
        pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$",
        description="Polled for health (200: up). vLLM: /health; a server without one, e.g. llama.cpp's: /v1/models.",
    )

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")


class AffinitySettings(_Strict):
    """Which replica of an arm a request goes to when it has several (gateway/affinity.py)."""

    mode: Literal["none", "session", "prefix"] = Field(
        "none",
        description="none: least-loaded; session: same x-session-id header or `user` field, same replica; "
        "prefix: those, else the same conversation opening (system prompt + first user message).",
    )
    prefix_chars: int = Field(512, ge=16, le=100_000, description="Characters of the opening hashed in prefix mode.")
    load_factor: float = Field(
        1.25, ge=1.0, le=10.0, description="A replica keeps its keys while its load <= this x the arm's mean load."
    )


ArmEndpoint = Literal["chat", "completions", "embeddings"]


class ArmSettings(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(min_length=1, description="The public model name clients use.")
    backends: list[str] = Field(min_length=1)
    strategy: dict[str, Any] = Field(default_factory=lambda: {"kind": "plain"})
    affinity: AffinitySettings = AffinitySettings.model_validate({})
    endpoints: list[ArmEndpoint] = Field(
        default_factory=lambda: list[ArmEndpoint](["chat", "completions"]),
        min_length=1,
        description="What the arm's backends serve; embeddings: /v1/embeddings (a plain arm, routed least-loaded).",
    )
    pinned_only: bool = Field(
        False,
        description="Served only when a request pins it (route.arm / x-route-arm), or names a model only such arms "
        "serve; never chosen by the routing policy, so a learned artifact need not know it.",
    )

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("an endpoint is listed twice")
        return v

    @model_validator(mode="after")
    def _embeddings_are_plain(self) -> ArmSettings:
        if "embeddings" in self.endpoints and self.strategy.get("kind", "plain") != "plain":
            raise ValueError(f"endpoints: an arm serving embeddings has strategy plain, not '{self.strategy['kind']}'")
        return self

    @property
    def generates(self) -> bool:
        """Whether the arm serves chat or text completions (and so is routed by the policy)."""
        return "chat" in self.endpoints or "completions" in self.endpoints

    @field_validator("affinity", mode="before")
    @classmethod
    def _affinity_shorthand(cls, v: Any) -> Any:
        return {"mode": v} if isinstance(v, str) else v  # `affinity: session`

    @field_validator("model")
    @classmethod
    def _not_auto(cls, v: str) -> str:
        if v == AUTO_MODEL:
            raise ValueError(f"'{AUTO_MODEL}' is reserved for router-chosen arms")
        return v

    @field_validator("strategy")
    @classmethod
    def _valid_strategy(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            build_strategy(v)
        except StrategyError as exc:
            raise ValueError(str(exc)) from None
        return v

    def build_strategy(self) -> Strategy:
        return build_strategy(self.strategy)


class RoutingSettings(_Strict):
    policy: str = "least-loaded"
    params: dict[str, Any] = Field(default_factory=dict)
    # seconds an arm's measured TTFT / decode speed stays in use; then its profiled speed again
    live_ttl_s: float = Field(default=60.0, gt=0)
    decision_log: str | None = Field(
        None,
        min_length=1,
        description="JSONL file: one line per request the learned policy routed (gateway/decision_log.py); unset: off.",
    )

    @field_validator("decision_log")
    @classmethod
    def _log_file(cls, v: str | None) -> str | None:
        if v is not None and Path(v).expanduser().is_dir():
            raise ValueError(f"'{v}' is a directory; expected the path of a JSONL file")
        return v

    @field_validator("policy")
    @classmethod
    def _valid_policy(cls, v: str) -> str:
        if v not in available_policies():
            raise ValueError(f"unknown policy '{v}'; available: {', '.join(available_policies())}")
        return v

    def build(self, arms: Sequence[Arm]) -> Policy:
        """Build the policy and let it check the arms; :class:`SettingsError` names what is wrong."""
        try:
            policy = build_policy(self.policy, self.params)
            policy.bind(arms)
        except ValueError as exc:
            raise SettingsError(f"routing.policy '{self.policy}': {exc}") from None
        return policy


class HealthSettings(_Strict):
    interval_s: float = Field(2.0, gt=0, description="Period of /health and /metrics polling per backend.")
    timeout_s: float = Field(2.0, gt=0)
    unhealthy_after: int = Field(2, ge=1, description="Consecutive failed checks before a backend is marked down.")
    breaker_after: int = Field(
        3, ge=1, le=100, description="Request failures in a row (timeouts, connects, broken answers) opening a breaker."
    )
    breaker_cooldown_s: float = Field(
        30.0, gt=0, le=3600, description="How long an open breaker sends nothing to its backend before one trial."
    )


class TimeoutSettings(_Strict):
    connect_s: float = Field(5.0, gt=0)
    first_byte_s: float = Field(600.0, gt=0, description="Until upstream response headers arrive.")
    idle_s: float = Field(120.0, gt=0, description="Longest silence between two stream chunks.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 when no backend is healthy.")


class StreamingSettings(_Strict):
    """Continuing a stream on another backend of its arm when its backend dies mid-answer
    (gateway/resume.py)."""

    max_resumes: int = Field(
        1, ge=0, le=5, description="Continuations per streamed answer after a backend died mid-stream; 0: off."
    )
    resume_deadline_s: float = Field(
        10.0, gt=0, le=600, description="From the failure until the continuation's response headers; then give up."
    )
    max_event_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest upstream SSE event relayed; a larger one ends the stream (error event, [DONE]).",
    )


class ApiKeySettings(_Strict):
    """One client API key, stored only as the SHA-256 of the key (``llm-gateway hash-key`` prints it)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Shown in logs and metrics.")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="Hex SHA-256 of the key; never the key itself.")
    models: list[str] | None = Field(None, description="Public models this key may use; all when unset.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute; unlimited when unset.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute; unlimited when unset.")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class AuthSettings(_Strict):
    keys: list[ApiKeySettings] = Field(default_factory=list, description="No keys: authentication is off.")

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


class FeedbackSettings(_Strict):
    """``POST /v1/feedback``: ratings appended to ``path`` (JSONL), joined with recent decisions."""

    path: str | None = Field(None, description="JSONL file for ratings; unset: the endpoint answers 404.")
    remember: int = Field(10000, ge=0, le=1_000_000, description="Recent decisions kept in memory to join.")
    store_prompts: bool = Field(False, description="Write the prompt text with each rating (else its sha256).")
    prompt_memory_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="With store_prompts: memory for the remembered prompts; the oldest lose their text first.",
    )
    rpm: int = Field(120, ge=1, description="Ratings per minute per API key (its own budget, not the key's rpm).")
    anonymous_rpm: int = Field(300, ge=1, description="Ratings per minute shared by every caller without a key.")


class LimitSettings(_Strict):
    """Caps on one request (400 naming the field) and the up-front token estimate of rate limiting."""

    max_tokens: int | None = Field(None, ge=1, description="Cap on max_tokens / max_completion_tokens.")
    max_n: int = Field(16, ge=1, le=128, description="Cap on n.")
    max_messages: int = Field(1024, ge=1, description="Cap on the number of chat messages.")
    assumed_completion_tokens: int = Field(
        512, ge=1, description="Completion tokens charged up front to a tpm budget when max_tokens is unset."
    )


class TracingSettings(_Strict):
    """OpenTelemetry traces (gateway/tracing.py), exported over OTLP. Off by default; the ``OTEL_*``
    variables fill what the file leaves unset (:func:`otel_environment`)."""

    enabled: bool = Field(False, description="Export a trace per request; needs the `tracing` extra.")
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OTLP receiver; http/protobuf: base URL (/v1/traces appended when it has no path), "
        "default http://localhost:4318; grpc: default http://localhost:4317.",
    )
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    service_name: str = Field("llm-gateway", min_length=1)
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="Share of new traces kept (a client's flag wins).")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every export (e.g. auth).")


def otel_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``tracing`` keys from the standard ``OTEL_*`` variables (signal-specific ones first)."""
    found: dict[str, Any] = {}
    names = {
        "endpoint": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        "protocol": ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        "service_name": ("OTEL_SERVICE_NAME",),
        "sample_ratio": ("OTEL_TRACES_SAMPLER_ARG",),
        "headers": ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    }
    for key, variables in names.items():
        value = next((environ[v] for v in variables if environ.get(v)), None)
        if value is not None:
            found[key] = value
    if "headers" in found:  # W3C baggage format: k=v,k2=v2 (values percent-encoded)
        pairs = (item.partition("=") for item in found["headers"].split(",") if "=" in item)
        found["headers"] = {unquote(k.strip()): unquote(v.strip()) for k, _, v in pairs}
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or environ.get("OTEL_TRACES_EXPORTER") == "none":
        found["enabled"] = False
    return found


class Settings(_Strict):
    """Root of the configuration. See ``deploy/local/gateway.yaml`` for an example."""

    server: ServerSettings = Field(default_factory=ServerSettings)  # type: ignore[arg-type]
    backends: list[BackendSettings] = Field(min_length=1)
    arms: list[ArmSettings] = Field(min_length=1)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)  # type: ignore[arg-type]
    health: HealthSettings = Field(default_factory=HealthSettings)  # type: ignore[arg-type]
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)  # type: ignore[arg-type]
    max_attempts: int = Field(3, ge=1, le=10, description="Backends tried per request before the first byte.")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)  # type: ignore[arg-type]
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)  # type: ignore[arg-type]
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)  # type: ignore[arg-type]
    tracing: TracingSettings = Field(default_factory=TracingSettings)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        problems: list[str] = []
        seen: set[str] = set()
        for i, b in enumerate(self.backends):
            if b.name in seen:
                problems.append(f"backends[{i}].name: duplicate backend name '{b.name}'")
            seen.add(b.name)
        arm_names: set[str] = set()
        for i, a in enumerate(self.arms):
            if a.name in arm_names:
                problems.append(f"arms[{i}].name: duplicate arm name '{a.name}'")
            arm_names.add(a.name)
            for j, ref in enumerate(a.backends):
                if ref not in seen:
                    problems.append(
                        f"arms[{i}].backends[{j}]: unknown backend '{ref}'; known: {', '.join(sorted(seen))}"
                    )
        for i, a in enumerate(self.arms):
            for param in ("draft_arm", "refine_arm"):
                target = a.strategy.get(param)
                if target is not None and target not in arm_names:
                    problems.append(f"arms[{i}].strategy.{param}: unknown arm '{target}'")
                elif target is not None and self._arm(target).strategy.get("kind") == "pdr":
                    problems.append(f"arms[{i}].strategy.{param}: '{target}' is itself a pdr arm")
                elif target is not None and "chat" not in self._arm(target).endpoints:
                    problems.append(f"arms[{i}].strategy.{param}: '{target}' does not serve chat")
        if not any(a.generates for a in self.arms):
            problems.append("arms: no arm serves chat or completions")
        elif not any(a.generates and not a.pinned_only for a in self.arms):
            problems.append("arms: every arm serving chat or completions is pinned_only; the router needs one")
        problems += self._key_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _key_problems(self) -> list[str]:
        problems: list[str] = []
        models = {a.model for a in self.arms}
        names: set[str] = set()
        hashes: set[str] = set()
        for i, k in enumerate(self.auth.keys):
            if k.name in names:
                problems.append(f"auth.keys[{i}].name: duplicate key name '{k.name}'")
            if k.sha256 in hashes:
                problems.append(f"auth.keys[{i}].sha256: the same key is configured twice")
            names.add(k.name)
            hashes.add(k.sha256)
            for j, m in enumerate(k.models or ()):
                if m == AUTO_MODEL:
                    problems.append(
                        f"auth.keys[{i}].models[{j}]: '{AUTO_MODEL}' is implied (it routes among the key's models)"
                    )
                elif m not in models:
                    problems.append(
                        f"auth.keys[{i}].models[{j}]: unknown model '{m}'; known: {', '.join(sorted(models))}"
                    )
        return problems

    def _arm(self, name: str) -> ArmSettings:
        return next(a for a in self.arms if a.name == name)

    def backend(self, name: str) -> BackendSettings:
        return next(b for b in self.backends if b.name == name)


def _format_errors(exc: ValidationError, from_env: Mapping[tuple[Any, ...], str]) -> str:
    """One line per problem, by key; a key set (or reached) through a ``GATEWAY_*`` variable names it."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ""
        for part in loc:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        var = next((v for path, v in from_env.items() if loc[: len(path)] == path), None)
        lines.append(f"  {key or '<root>'}: {msg}" + (f" (set by {var})" if var else ""))
    return "\n".join(lines)


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[Any, ...], str]:
    """Apply the ``GATEWAY_*`` variables to ``data``; returns each set key's path -> its variable."""
    applied: dict[tuple[Any, ...], str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
            if isinstance(node, list) and (not isinstance(key, int) or key >= len(node)):
                raise SettingsError(f"{var}: index '{part}' does not exist in the configuration")
            if last:
                try:
                    node[key] = yaml.safe_load(raw) if raw else raw
                except yaml.YAMLError as exc:
                    raise SettingsError(f"{var}: not a valid YAML value: {exc}") from None
                applied[tuple(int(p) if p.isdigit() else p for p in path)] = var
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return applied


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from a YAML file (optional) and ``GATEWAY_*`` variables.

    Raises :class:`SettingsError` with every problem named by key.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    where = "environment"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    if otel := otel_environment(environ):  # under the file's own tracing keys; GATEWAY_* still wins
        tracing = data.setdefault("tracing", {})
        if isinstance(tracing, dict):
            disabled = otel.pop("enabled", None) is False  # OTEL_SDK_DISABLED wins over the file
            data["tracing"] = {**otel, **tracing, **({"enabled": False} if disabled else {})}
    from_env = _apply_env(data, environ)
    if from_env and path is not None:
        where += " and GATEWAY_* variables"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(f"invalid configuration ({where}):\n{_format_errors(exc, from_env)}") from None
