"""loadtests.cprofile_calls: which group a profiled function's file falls in, and the per-request sums."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.cprofile_calls import OTHER, breakdown, group_of


@pytest.mark.parametrize(
    ("path", "group"),
    [
        (".venv/lib/python3.11/site-packages/uvicorn/protocols/http/httptools_impl.py", "uvicorn"),
        (".venv/lib/python3.11/site-packages/aiohttp/streams.py", "upstream client"),
        ("/src/gateway/upstream_lean.py", "upstream client"),
        (".venv/lib/python3.11/site-packages/starlette/routing.py", "FastAPI + Starlette"),
        ("/src/router/learned.py", "router"),
        ("/src/gateway/relay.py", "relay, SSE"),
        ("/src/gateway/metrics.py", "metrics"),
        ("/src/gateway/admission.py", "rest of the gateway"),
        ("/usr/lib/python3.11/asyncio/tasks.py", "asyncio"),
        ("~", OTHER),
    ],
)
def test_group_of(path: str, group: str) -> None:
    assert group_of(path).startswith(group)


def test_breakdown_sums_per_request_and_counts_reads() -> None:
    class Stats:
        stats: dict[tuple[str, int, str], tuple[Any, ...]] = {
            ("/src/gateway/sse.py", 42, "feed"): (30, 30, 0.1, 0.1, {}),
            ("/x/uvicorn/a.py", 1, "send"): (40, 40, 0.3, 0.3, {}),
        }

    out: Any = breakdown(Stats(), 2)  # type: ignore[arg-type]
    assert out["reads_per_stream"] == 15
    assert out["calls_per_request"] == 35
    assert out["groups"][group_of("/x/uvicorn/a.py")]["share"] == pytest.approx(0.75)
    # the functions with the most self time first: (file:line(name), share of self time, calls per request)
    assert out["top"] == [("a.py:1(send)", pytest.approx(0.75), 20), ("sse.py:42(feed)", pytest.approx(0.25), 15)]
