"""Backend load: parsing vLLM's ``/metrics``, the load formula, least-loaded choice, failure accounting."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import ValidationError

from gateway.backends import BREAKER_KINDS, Backend, BackendPool, parse_vllm_load
from gateway.metrics import GatewayMetrics
from gateway.settings import BackendSettings, HealthSettings, TimeoutSettings
from gateway.upstream import HttpxUpstream

# Shape and comments as served by vLLM 0.32 (two engines, so label sets repeat)
VLLM_METRICS = b"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 3.0
vllm:num_requests_running{engine="1",model_name="smollm2"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 1.0
vllm:num_requests_waiting{engine="1",model_name="smollm2"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="smollm2",reason="capacity"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="smollm2",reason="deferred"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="smollm2"} 0.125
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smollm2"} 4242.0
# HELP vllm:spec_decode_num_accepted_tokens_total Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="smollm2"} 99.0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VLLM_METRICS, {"running": 5.0, "waiting": 1.0, "kv_usage": 0.375}),
        (b"vllm:num_requests_running 4\nvllm:num_requests_waiting 2.5\n", {"running": 4.0, "waiting": 2.5}),
        (b'vllm:num_requests_running{model_name="a b"} 1e1\n', {"running": 10.0}),
        (b'vllm:num_requests_running{engine="0"} NaNish\nvllm:num_requests_waiting{engine="0"} 3\n', {"waiting": 3.0}),
        (b"vllm:num_requests_running_total 7\n# vllm:num_requests_running 7\n", {}),
        (b"vllm:num_requests_running", {}),
        (b"", {}),
        (b"<html>not metrics</html>", {}),
        # vLLM before 0.10 named the KV-cache gauge gpu_cache_usage_perc; read it when it is the only one
        (b'vllm:gpu_cache_usage_perc{engine="0"} 0.5\nvllm:num_requests_running 1\n', {"kv_usage": 0.5, "running": 1}),
        (b"vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.25\n", {"kv_usage": 0.25}),
    ],
)
def test_parse_vllm_load(text: bytes, expected: dict[str, float]) -> None:
    assert parse_vllm_load(text) == pytest.approx(expected)


def backend_settings(name: str) -> BackendSettings:
    return BackendSettings(name=name, url=f"http://{name}.test:8000", served_model="m")  # type: ignore[arg-type]


@pytest.fixture
def pool() -> BackendPool:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))  # never called
    upstream = HttpxUpstream(TimeoutSettings(), client=client)
    return BackendPool([backend_settings(n) for n in ("a", "b", "c")], HealthSettings(), upstream, GatewayMetrics())


def set_state(pool: BackendPool, **loads: float | None) -> None:
    """``a=2`` makes ``a`` healthy with 2 running; ``a=None`` makes it unhealthy."""
    for name, load in loads.items():
        b = pool.backends[name]
        b.healthy = load is not None
        b.running = load or 0.0


@pytest.mark.parametrize(
    ("loads", "names", "exclude", "chosen"),
    [
        ({"a": 2, "b": 0, "c": 1}, "abc", "", "b"),
        ({"a": 1, "b": 1, "c": 1}, "abc", "", "a"),  # ties: first in the order given
        ({"a": 1, "b": 1, "c": 1}, "cba", "", "c"),
        ({"a": 0, "b": 3, "c": 1}, "abc", "a", "c"),  # exclusion beats load
        ({"a": 0, "b": 3, "c": 1}, "abc", "ac", "b"),
        ({"a": None, "b": 3, "c": None}, "abc", "", "b"),  # unhealthy skipped
        ({"a": 0, "b": 0, "c": 0}, "bc", "", "b"),  # only the names asked for
        ({"a": None, "b": None, "c": None}, "abc", "", None),
        ({"a": 0, "b": 0, "c": 0}, "abc", "abc", None),
    ],
)
def test_choose_least_loaded_healthy_not_excluded(
    pool: BackendPool, loads: dict[str, float | None], names: str, exclude: str, chosen: str | None
) -> None:
    set_state(pool, **loads)

    picked = pool.choose(list(names), set(exclude))

    assert (picked.name if picked else None) == chosen


@pytest.mark.parametrize(
    ("inflight", "running", "waiting", "kv_usage", "load"),
    [
        (0, 0.0, 0.0, 0.0, 0.0),
        (2, 0.0, 0.0, 0.0, 2.0),  # our own requests count before the next scrape sees them
        (1, 3.0, 0.0, 0.0, 3.0),  # the scrape includes other clients' requests
        (1, 1.0, 2.0, 0.5, 3.5),  # queue and KV-cache use add
    ],
)
def test_backend_load(
    pool: BackendPool, inflight: int, running: float, waiting: float, kv_usage: float, load: float
) -> None:
    b: Backend = pool.backends["a"]
    for _ in range(inflight):
        b.acquire()
    b.running, b.waiting, b.kv_usage = running, waiting, kv_usage

    assert b.load == load


def test_inflight_acquire_and_release_move_the_gauge(pool: BackendPool) -> None:
    b = pool.backends["a"]
    b.acquire()
    b.acquire()
    b.release()
    assert b.inflight == 1
    assert b'gateway_inflight_requests{backend="a"} 1.0' in pool._metrics.exposition()


@pytest.mark.parametrize(
    ("kinds", "healthy"),
    [
        (["connect"], False),  # refused: out at once
        (["connect_timeout"], True),  # a slow connect may be our own starvation: counted, not final
        (["connect_timeout", "connect_timeout"], False),
        (["timeout"], True),
        (["timeout", "http_5xx"], False),  # unhealthy_after=2 in a row
        (["http_5xx", "success", "http_5xx"], True),  # a success resets the count
    ],
)
def test_failures_take_a_backend_out(pool: BackendPool, kinds: list[str], healthy: bool) -> None:
    set_state(pool, a=0)
    b = pool.backends["a"]
    for kind in kinds:
        if kind == "success":
            pool.report_success(b)
        else:
            pool.report_failure(b, kind, "detail")

    assert b.healthy is healthy
    assert b.last_error == f"{kinds[-1]}: detail"


@pytest.mark.parametrize(
    ("kinds", "state"),
    [
        (["timeout", "timeout"], "closed"),
        (["timeout", "timeout", "timeout"], "open"),  # breaker_after=3 in a row
        (["connect", "connect_timeout", "protocol"], "open"),
        (["timeout", "stream", "success", "timeout"], "closed"),  # a success resets the count
        (["http_5xx"] * 5, "closed"),  # clients can provoke 5xx: not counted
        (["http_4xx"] * 5, "closed"),
    ],
)
def test_request_failures_in_a_row_open_the_breaker_whatever_health_says(
    pool: BackendPool, kinds: list[str], state: str
) -> None:
    set_state(pool, a=0, b=0)
    b = pool.backends["a"]
    for kind in kinds:
        if kind == "success":
            pool.report_success(b)
        else:
            pool.report_failure(b, kind)
        b.healthy = True  # as if /health kept passing between requests

    assert b.breaker(time.monotonic()) == state
    suspect = kinds[-1] in BREAKER_KINDS  # its last request failed: the other backend goes first
    assert (pool.choose(["a", "b"]).name == "a") is (state == "closed" and not suspect)
    assert f'gateway_backend_breaker_open{{backend="a"}} {1.0 if state == "open" else 0.0}' in (
        pool._metrics.exposition().decode()
    )


def test_least_loaded_does_not_prefer_a_backend_whose_last_request_failed(pool: BackendPool) -> None:
    set_state(pool, a=0, b=5, c=None)
    pool.report_failure(pool.backends["a"], "timeout")

    assert pool.choose(["a", "b"]).name == "b", "a failed within a cool-down: every other backend first"
    assert pool.choose(["a", "b"], {"b"}).name == "a", "still used when nothing else is left"
    pool.backends["a"].failed_at -= HealthSettings().breaker_cooldown_s + 1
    assert pool.choose(["a", "b"]).name == "a", "after a cool-down it competes by load again"


def test_a_backend_back_up_after_being_down_competes_by_load_at_once(pool: BackendPool) -> None:
    set_state(pool, a=0, b=0)
    a = pool.backends["a"]
    pool.report_failure(a, "stream")  # died mid-stream
    pool.report_failure(a, "connect")  # then refused: marked down
    assert not a.healthy and pool.choose(["a", "b"]).name == "b"

    pool.report_failure(a, "stream")  # a third: its breaker opens
    assert a.breaker(time.monotonic()) == "open"

    a.unreachable = True  # the health checks could not reach it (as BackendPool.check records)
    pool._set_health(a, True)  # /health passes again: restarted, a new process

    assert a.breaker(time.monotonic()) == "closed" and a.request_failures == 0
    assert pool.choose(["a", "b"]).name == "a", "ties go to the first listed again"
    assert 'gateway_backend_breaker_open{backend="a"} 0.0' in pool._metrics.exposition().decode()


def test_failures_while_health_passes_are_never_cleared_by_it(pool: BackendPool) -> None:
    """A backend that answers /health but fails requests is taken out by the request path, never found
    unreachable, so a passing /health does not clear its breaker."""
    set_state(pool, a=0, b=0)
    a = pool.backends["a"]
    for _ in range(3):
        pool.report_failure(a, "timeout")
        pool._set_health(a, True)  # health keeps passing: no down -> up transition
    assert a.breaker(time.monotonic()) == "open" and a.request_failures == 3


def test_half_open_lets_exactly_one_trial_through(pool: BackendPool) -> None:
    set_state(pool, a=0, b=5)
    a = pool.backends["a"]
    for _ in range(3):
        pool.report_failure(a, "timeout")
    a.healthy = True  # /health passes
    assert pool.choose(["a", "b"]).name == "b" and not pool.usable("a")
    a.open_until = time.monotonic() - 0.001  # the cool-down is over: half-open

    trial = pool.choose(["a", "b"])
    assert trial is a and a.probing
    assert pool.choose(["a", "b"]).name == "b", "one trial at a time"
    trial.acquire()
    trial.release()  # the trial ended without a verdict (client gone, 4xx): another may go
    assert pool.choose(["a", "b"]) is a
    pool.report_failure(a, "timeout")  # the trial failed: open again for a full cool-down
    a.healthy = True
    assert a.breaker(time.monotonic()) == "open"
    a.open_until = time.monotonic() - 0.001
    assert pool.choose(["a", "b"]) is a
    pool.report_success(a)  # the trial answered: closed
    assert a.breaker(time.monotonic()) == "closed" and a.request_failures == 0
    assert pool.choose(["a", "b"]) is a


async def test_health_check_reads_load_and_marks_up_then_down() -> None:
    answers = {"/health": 200}

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, content=VLLM_METRICS)
        return httpx.Response(answers["/health"])

    metrics = GatewayMetrics()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        upstream = HttpxUpstream(TimeoutSettings(), client=client)
        pool = BackendPool([backend_settings("a")], HealthSettings(unhealthy_after=2), upstream, metrics)
        b = pool.backends["a"]
        assert not b.healthy, "unknown until the first check"
        await pool.check(b)
        assert b.healthy and (b.running, b.waiting, b.kv_usage) == (5.0, 1.0, 0.375)
        answers["/health"] = 503
        await pool.check(b)
        assert b.healthy, "one failed check is tolerated"
        await pool.check(b)
        assert not b.healthy and b.last_error == "/health returned 503"
    assert b'gateway_backend_up{backend="a"} 0.0' in metrics.exposition()


async def test_timed_out_health_checks_spare_a_backend_that_keeps_answering() -> None:
    """Under CPU starvation health checks time out while requests still complete: no false DOWN."""
    mode = {"health": "ok"}

    def upstream(request: httpx.Request) -> httpx.Response:
        if mode["health"] == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if mode["health"] == "refused":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=VLLM_METRICS if request.url.path == "/metrics" else b"")

    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        pool = BackendPool(
            [backend_settings("a")],
            HealthSettings(unhealthy_after=2),
            HttpxUpstream(TimeoutSettings(), client=client),
            GatewayMetrics(),
        )
        b = pool.backends["a"]
        await pool.check(b)
        mode["health"] = "timeout"
        for _ in range(4):  # it answers a request between every two checks
            pool.report_success(b)
            await pool.check(b)
            assert b.healthy and b.failures == 0
        await pool.check(b)  # no request answered since: this one counts
        assert b.healthy and b.failures == 1
        await pool.check(b)
        assert not b.healthy
        mode["health"] = "ok"
        await pool.check(b)
        pool.report_success(b)
        mode["health"] = "refused"  # a refused connection is not excused by earlier answers
        await pool.check(b)
        await pool.check(b)
        assert not b.healthy


async def test_a_backend_without_health_is_checked_on_its_health_path_and_not_scraped() -> None:
    """llama.cpp's server has no /health and no /metrics: health_path /v1/models, scrape_metrics off."""
    seen: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200 if request.url.path == "/v1/models" else 404)

    settings = BackendSettings(
        name="llama",
        url="http://llama.test:8000",  # type: ignore[arg-type]
        served_model="m",
        health_path="/v1/models",
        scrape_metrics=False,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        pool = BackendPool(
            [settings], HealthSettings(), HttpxUpstream(TimeoutSettings(), client=client), GatewayMetrics()
        )
        await pool.check(pool.backends["llama"])
    assert pool.backends["llama"].healthy and seen == ["/v1/models"]


@pytest.mark.parametrize("path", ["v1/models", "/v1/models?x=1", "/a b", ""])
def test_a_health_path_is_an_absolute_path(path: str) -> None:
    with pytest.raises(ValidationError, match="health_path"):
        BackendSettings(name="a", url="http://a.test", served_model="m", health_path=path)  # type: ignore[arg-type]
