"""Live arm measurements: exponentially weighted, and expired so a past burst does not steer routing forever."""

from __future__ import annotations

import httpx
import pytest

from gateway.arms import ArmCatalog, LiveArm
from gateway.backends import BackendPool
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings, TimeoutSettings
from gateway.upstream import HttpxUpstream
from router import Arm, build_strategy


def live(ttl_s: float = 60.0) -> LiveArm:
    return LiveArm(Arm(name="a", model="m", strategy=build_strategy({"kind": "plain"})), ["b1"], ttl_s=ttl_s)


def test_first_measurement_is_taken_as_is_then_averaged() -> None:
    arm = live()
    arm.record(0.5, 40.0, now=100.0)
    assert (arm.ttft_s, arm.tokens_per_s) == (0.5, 40.0)
    arm.record(1.5, 20.0, now=101.0)
    assert arm.ttft_s == pytest.approx(0.8 * 0.5 + 0.2 * 1.5)
    assert arm.tokens_per_s == pytest.approx(0.8 * 40.0 + 0.2 * 20.0)


def test_a_missing_half_leaves_the_other_mean_alone() -> None:
    arm = live()
    arm.record(0.5, None, now=100.0)
    arm.record(None, 30.0, now=100.5)
    assert (arm.ttft_s, arm.tokens_per_s) == (0.5, 30.0)
    arm.record(None, None, now=500.0)
    assert arm.measured_at == 100.5, "a request that measured nothing does not refresh the means"


def test_measurements_expire_and_the_next_one_starts_a_new_mean() -> None:
    arm = live(ttl_s=10.0)
    arm.record(2.0, 5.0, now=100.0)  # taken under a burst
    assert arm.fresh(110.0) and not arm.fresh(110.5)
    arm.record(0.2, 50.0, now=200.0)  # quiet again: the burst no longer weighs in
    assert (arm.ttft_s, arm.tokens_per_s) == (0.2, 50.0)


def test_ratios_to_the_forecast_are_averaged_beside_the_measurements() -> None:
    arm = live(ttl_s=10.0)
    arm.record(0.5, 40.0, (2.0, 0.5), now=100.0)
    assert (arm.ttft_ratio, arm.speed_ratio) == (2.0, 0.5)
    arm.record(0.5, 40.0, (1.0, None), now=101.0)  # no speed forecast: that ratio unchanged
    assert arm.ttft_ratio == pytest.approx(0.8 * 2.0 + 0.2 * 1.0) and arm.speed_ratio == 0.5
    arm.record(0.2, 50.0, now=200.0)  # stale, and no forecast this time: the ratios start empty
    assert (arm.ttft_ratio, arm.speed_ratio) == (None, None)


def settings(ttl_s: float) -> Settings:
    return Settings.model_validate(
        {
            "backends": [{"name": "b1", "url": "http://127.0.0.1:8001", "served_model": "smollm2"}],
            "arms": [
                {"name": "plain", "model": "smol", "backends": ["b1"]},
                {"name": "spec", "model": "smol", "backends": ["b1"]},
            ],
            "routing": {"live_ttl_s": ttl_s},
        }
    )


def test_router_sees_live_speed_only_while_it_is_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(ttl_s=30.0)
    catalog = ArmCatalog(s)
    upstream = HttpxUpstream(TimeoutSettings(), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    pool = BackendPool(s.backends, s.health, upstream, GatewayMetrics())
    for b in pool.backends.values():
        b.healthy = True
    arm = catalog.arms["plain"]
    clock = [1000.0]
    monkeypatch.setattr("gateway.arms.time.monotonic", lambda: clock[0])
    arm.record(0.4, 25.0, (1.2, 0.9))
    [state, other] = catalog.states([arm, catalog.arms["spec"]], pool)
    assert (state.ttft_s, state.tokens_per_s, state.ttft_ratio, state.speed_ratio) == (0.4, 25.0, 1.2, 0.9)
    assert (other.ttft_s, other.tokens_per_s) == (None, None), "never measured: the profiled speed applies"
    clock[0] += 31.0
    [state] = catalog.states([arm], pool)
    assert (state.ttft_s, state.tokens_per_s, state.ttft_ratio, state.speed_ratio) == (None, None, None, None)
    assert state.healthy
