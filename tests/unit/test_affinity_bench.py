"""The affinity benchmark's arithmetic: vLLM's prefix-cache counters, one run's summary, the table."""

from __future__ import annotations

import pytest

from loadtests.affinity_bench import parse_counters, report, summarise

METRICS = """# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2"} 1000.0
vllm:prefix_cache_queries_created{engine="0",model_name="smollm2"} 1.7e+09
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2"} 250.0
vllm:prefix_cache_hits_total{engine="1",model_name="smollm2"} 50.0
"""


def test_counters_are_summed_over_label_sets_and_created_gauges_ignored() -> None:
    assert parse_counters(METRICS) == {"vllm:prefix_cache_queries": 1000.0, "vllm:prefix_cache_hits": 300.0}
    assert parse_counters("") == {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}


def test_a_run_is_summarised() -> None:
    results = [[(0.2, "r1"), (0.1, "r1")], [(0.3, "r2"), (0.5, "r1")], [(0.2, "r1"), (0.1, "r1")]]
    before = {"vllm:prefix_cache_queries": 100.0, "vllm:prefix_cache_hits": 10.0}
    after = {"vllm:prefix_cache_queries": 300.0, "vllm:prefix_cache_hits": 110.0}
    run = summarise("affinity", 0, results, before, after, 12.0)
    assert run["prefix_cache_hit_rate"] == pytest.approx(0.5)
    assert run["same_replica_share"] == pytest.approx(2 / 3)
    assert run["requests_per_backend"] == {"r1": 5, "r2": 1}
    assert run["imbalance"] == pytest.approx(5 / 3)
    assert run["ttft_second_turn_p50_s"] == pytest.approx(0.1)
    table = report([run, {**run, "gateway": "least-loaded", "prefix_cache_hit_rate": None}])
    assert "| affinity | 1 | 50.0% |" in table and "| least-loaded | 1 | nan% |" in table
