"""gateway.tracing without an app: W3C traceparent parsing, the off path (no-op, pass-through, nothing of
OpenTelemetry imported), the ``tracing`` settings with the ``OTEL_*`` variables, and the exporter chosen."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from gateway.settings import SettingsError, TracingSettings, load_settings, otel_environment
from gateway.tracing import NO_ATTEMPT, NO_TRACE, NO_TRACER, build_tracer, current, valid_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MINIMAL = {
    "backends": [{"name": "b1", "url": "http://127.0.0.1:8001", "served_model": "m"}],
    "arms": [{"name": "a", "model": "m", "backends": ["b1"]}],
}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (VALID, True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),  # not sampled: still a context
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later-fields", True),  # a future version
        (VALID.upper(), False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        (VALID + "-extra", False),  # version 00 has exactly four fields
        (VALID[:-1], False),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_traceparent_validation(value: str, valid: bool) -> None:
    assert valid_traceparent(value) is valid


@pytest.mark.parametrize(
    ("headers", "forwarded"),
    [
        ({}, {}),
        ({"traceparent": VALID}, {"traceparent": VALID}),
        ({"traceparent": f" {VALID} ", "tracestate": "k=v"}, {"traceparent": VALID, "tracestate": "k=v"}),
        ({"traceparent": "nope", "tracestate": "k=v"}, {}),
        ({"tracestate": "k=v"}, {}),
    ],
    ids=["absent", "valid", "with-tracestate", "invalid", "tracestate-alone"],
)
def test_off_the_no_op_passes_a_valid_client_context_through(
    headers: dict[str, str], forwarded: dict[str, str]
) -> None:
    trace = NO_TRACER.request("chat", "rid", headers)
    assert current() is trace
    assert (trace is NO_TRACE) is (not forwarded)
    sent = {"x-request-id": "rid"}
    assert trace.attempt("b1", "/v1/chat/completions", "rid", sent) is NO_ATTEMPT
    assert sent == {"x-request-id": "rid", **forwarded}
    # every other hook does nothing and returns nothing
    trace.deciding()
    trace.stage("draft", 0.1)
    trace.relay("b1")
    NO_ATTEMPT.answered(200)
    NO_ATTEMPT.failed("connect")
    NO_TRACER.shutdown()


def test_off_by_default_and_nothing_of_the_sdk_is_imported() -> None:
    """A gateway with tracing off serves a request without importing the SDK, an exporter or our OTel
    module (FastAPI itself imports ``opentelemetry`` the API package; that is not ours to avoid)."""
    assert TracingSettings().enabled is False
    assert build_tracer(TracingSettings()) is NO_TRACER
    script = textwrap.dedent(
        """
        import sys, httpx, asyncio
        from gateway.app import create_app
        from gateway.settings import Settings
        config = {
            "backends": [{"name": "b1", "url": "http://b1.test:8000", "served_model": "m"}],
            "arms": [{"name": "a", "model": "m", "backends": ["b1"]}],
            "health": {"interval_s": 3600},
        }
        def upstream(request):
            if request.url.path.startswith("/v1/"):
                return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": []})
            return httpx.Response(200, text="")
        async def main():
            app = create_app(Settings.model_validate(config), transport=httpx.MockTransport(upstream))
            async with app.router.lifespan_context(app):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
                    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                    r = await c.post("/v1/chat/completions", json=body, headers={"traceparent": "x"})
                    assert r.status_code == 200, r.text
        asyncio.run(main())
        loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter",
                  "opentelemetry.proto", "gateway.tracing_otel"))]
        print(loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gateway.tracing_otel", None)  # import fails as if the SDK were absent
    with pytest.raises(SettingsError, match=r"pip install 'llm-gateway\[tracing\]'"):
        build_tracer(TracingSettings(enabled=True))


# ------------------------------------------------------------------ settings and OTEL_* variables


def test_otel_variables_map_to_tracing_keys() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "gw-1",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc, x-tenant = t1",
        "UNRELATED": "1",
    }
    assert otel_environment(env) == {
        "endpoint": "http://traces:4318/v1/traces",  # the signal-specific one wins
        "protocol": "grpc",
        "service_name": "gw-1",
        "sample_ratio": "0.25",
        "headers": {"authorization": "Bearer abc", "x-tenant": "t1"},
    }
    assert otel_environment({}) == {}


def _tracing(file: dict[str, Any] | None, env: dict[str, str], tmp_path: Any) -> TracingSettings:
    path = tmp_path / "gateway.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**MINIMAL, **({"tracing": file} if file is not None else {})}))
    return load_settings(path, environ=env).tracing


def test_file_keys_win_over_otel_variables_and_gateway_variables_over_both(tmp_path: Any) -> None:
    env = {"OTEL_SERVICE_NAME": "from-otel", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    assert _tracing(None, env, tmp_path) == TracingSettings(service_name="from-otel", sample_ratio=0.5)
    on = _tracing({"enabled": True, "service_name": "from-file"}, env, tmp_path)
    assert (on.enabled, on.service_name, on.sample_ratio) == (True, "from-file", 0.5)
    env["GATEWAY_TRACING__SERVICE_NAME"] = "from-gateway-var"
    env["GATEWAY_TRACING__ENABLED"] = "true"
    both = _tracing({"service_name": "from-file"}, env, tmp_path)
    assert (both.enabled, both.service_name) == (True, "from-gateway-var")


@pytest.mark.parametrize("env", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}])
def test_otel_sdk_disabled_turns_tracing_off_even_if_the_file_enables_it(env: dict[str, str], tmp_path: Any) -> None:
    assert _tracing({"enabled": True}, env, tmp_path).enabled is False


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        ({"sample_ratio": 1.5}, "tracing.sample_ratio"),
        ({"protocol": "http/json"}, "tracing.protocol"),
        ({"endpoint": "collector:4318"}, "tracing.endpoint"),
        ({"nope": 1}, "tracing.nope"),
    ],
)
def test_bad_tracing_settings_name_their_key(tracing: dict[str, Any], message: str, tmp_path: Any) -> None:
    with pytest.raises(SettingsError, match=message):
        _tracing(tracing, {}, tmp_path)


# ------------------------------------------------------------------ the exporter (SDK installed)


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, "http://localhost:4318/v1/traces"),
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otlp.example/custom/path", "https://otlp.example/custom/path"),
    ],
)
def test_http_exporter_endpoint(endpoint: str | None, url: str) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from gateway.tracing_otel import exporter_for

    exporter = exporter_for(TracingSettings(enabled=True, endpoint=endpoint, headers={"a": "b"}))
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    assert exporter._endpoint == url  # type: ignore[attr-defined]
    exporter.shutdown()


def test_grpc_exporter_when_asked() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
    from gateway.tracing_otel import exporter_for

    exporter = exporter_for(TracingSettings(enabled=True, protocol="grpc", endpoint="http://collector:4317"))
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    exporter.shutdown()
