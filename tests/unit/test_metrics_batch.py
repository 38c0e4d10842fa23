"""``gateway.metrics.observe_many``: a batch of observations gives the same exposition as one
``observe`` per value (bucket bounds included, values on a bound counted in it), in-process and in
prometheus multiprocess mode, and falls back to ``observe`` for a histogram kept some other way."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.metrics import ITL_BUCKETS, observe_many

VALUES = [*ITL_BUCKETS[:4], 0.0, 1e-9, 123.0, *(random.Random(7).uniform(0, 0.3) for _ in range(300))]


def exposition(batch: bool, registry: CollectorRegistry) -> bytes:
    child = Histogram("itl_seconds", "gaps", ["model"], buckets=ITL_BUCKETS, registry=registry).labels("m")
    if batch:
        observe_many(child, VALUES)
    else:
        for value in VALUES:
            child.observe(value)
    return generate_latest(registry)


def test_a_batch_is_the_same_as_one_observe_per_value() -> None:
    assert exposition(True, CollectorRegistry()) == exposition(False, CollectorRegistry())


def test_the_same_in_multiprocess_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = []
    for batch in (True, False):
        folder = tmp_path / str(batch)
        folder.mkdir()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
        # what importing prometheus_client with the variable set does (gateway/workers.py sets it first)
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
        exposition(batch, CollectorRegistry())
        reader = CollectorRegistry()
        MultiProcessCollector(reader, path=str(folder))
        got.append(generate_latest(reader))
    assert got[0] == got[1] and b'itl_seconds_count{model="m"} 307.0' in got[0]


def test_a_histogram_kept_otherwise_gets_one_observe_per_value() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    observe_many(plain, [0.1, 0.2])  # type: ignore[arg-type]
    assert plain.seen == [0.1, 0.2]
