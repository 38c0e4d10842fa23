"""Affinity within an arm's replicas: the hash ring, bounded load, request keys, and the pool's choice."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from gateway.affinity import Affinity, HashRing, request_key
from gateway.backends import BackendPool
from gateway.metrics import GatewayMetrics
from gateway.settings import ArmSettings, BackendSettings, HealthSettings, TimeoutSettings
from gateway.upstream import HttpxUpstream

NAMES = ["r0", "r1", "r2", "r3"]
KEYS = [f"session-{i}" for i in range(2000)]


def homes(ring: HashRing, names: list[str]) -> dict[str, str | None]:
    idle = dict.fromkeys(names, 0.0)
    return {k: ring.pick(k, idle, load_factor=100.0) for k in KEYS}


def test_keys_spread_over_every_replica() -> None:
    counts = Counter(homes(HashRing(NAMES), NAMES).values())
    assert set(counts) == set(NAMES)
    assert min(counts.values()) > 0.5 * len(KEYS) / len(NAMES), counts


def test_a_replica_that_leaves_moves_only_its_own_keys_and_they_return() -> None:
    ring = HashRing(NAMES)
    before = homes(ring, NAMES)
    during = homes(ring, ["r0", "r1", "r3"])  # r2 is down: not a candidate
    moved = [k for k in KEYS if before[k] != during[k]]
    assert moved and all(before[k] == "r2" for k in moved)
    assert homes(ring, NAMES) == before, "back up: its keys come back"


def test_bounded_load_sends_a_key_past_a_busy_home() -> None:
    ring = HashRing(NAMES)
    key = "hot-session"
    home = ring.pick(key, dict.fromkeys(NAMES, 0.0), 1.25)
    assert home is not None
    busy = {**dict.fromkeys(NAMES, 1.0), home: 6.0}  # mean 2.25: bound 1.25 x 2.25 + 1 = 3.8
    other = ring.pick(key, busy, 1.25)
    assert other is not None and other != home
    assert ring.pick(key, {**dict.fromkeys(NAMES, 1.0), home: 2.0}, 1.25) == home, "within the bound: stays"
    assert ring.pick(key, {**dict.fromkeys(NAMES, 0.0), home: 1.0}, 1.25) == home, "one stream: stays"
    assert ring.pick(key, {}, 1.25) is None


@pytest.mark.parametrize(
    ("mode", "session", "body", "key"),
    [
        ("none", "abc", {"user": "u"}, None),
        ("session", "abc", {"user": "u"}, "s:abc"),
        ("session", None, {"user": "u"}, "u:u"),
        ("session", None, {"messages": [{"role": "user", "content": "hi"}]}, None),
        ("prefix", "", {"user": ""}, None),
    ],
)
def test_request_keys(mode: str, session: str | None, body: dict[str, object], key: str | None) -> None:
    assert request_key(mode, session, body, 512) == key


def test_every_turn_of_a_conversation_shares_its_prefix_key() -> None:
    system = {"role": "system", "content": "You are terse."}
    turn1 = [system, {"role": "user", "content": "Plan a trip to Lisbon."}]
    turn2 = [*turn1, {"role": "assistant", "content": "Day 1: ..."}, {"role": "user", "content": "And day 2?"}]
    other = [system, {"role": "user", "content": "Plan a trip to Porto."}]
    k1, k2, k3 = (request_key("prefix", None, {"messages": m}, 512) for m in (turn1, turn2, other))
    assert k1 is not None and k1 == k2 != k3


def test_a_long_shared_system_prompt_is_the_whole_key() -> None:
    system = {"role": "system", "content": "Rules. " * 200}
    a = request_key("prefix", None, {"messages": [system, {"role": "user", "content": "q1"}]}, 512)
    b = request_key("prefix", None, {"messages": [system, {"role": "user", "content": "q2"}]}, 512)
    assert a == b
    long, cut = ({"prompt": "x" * n} for n in (600, 512))
    assert request_key("prefix", None, long, 512) == request_key("prefix", None, cut, 512)


def test_multi_part_content_and_odd_messages_do_not_break_the_key() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]}
    assert request_key("prefix", None, {"messages": ["junk", {"role": "user", "content": None}, parts]}, 512)
    assert request_key("prefix", None, {"messages": "not a list"}, 512) is None


def test_arm_affinity_setting_takes_a_shorthand() -> None:
    arm = ArmSettings(name="a", model="m", backends=["r0", "r1"], affinity="session")  # type: ignore[arg-type]
    assert arm.affinity.mode == "session" and arm.affinity.load_factor == 1.25
    with pytest.raises(ValueError, match="affinity"):
        ArmSettings(name="a", model="m", backends=["r0"], affinity="sticky")  # type: ignore[arg-type]


@pytest.fixture
def pool() -> BackendPool:
    upstream = HttpxUpstream(TimeoutSettings(), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    backends = [
        BackendSettings(name=n, url=f"http://127.0.0.1:{9000 + i}", served_model="m") for i, n in enumerate(NAMES)
    ]
    p = BackendPool(backends, HealthSettings(), upstream, GatewayMetrics())
    for b in p.backends.values():
        b.healthy = True
    return p


def test_the_pool_sends_a_key_home_unless_it_cannot(pool: BackendPool) -> None:
    ring = HashRing(NAMES)
    home = ring.pick("k", dict.fromkeys(NAMES, 0.0), 1.25)
    assert home is not None
    pool.backends[home].inflight = 1  # busier than the others, within the bound: still home
    aff = Affinity(ring, "k", 1.25)
    assert pool.choose(NAMES, affinity=aff).name == home and aff.kept

    assert pool.choose(NAMES, {home}, affinity=aff).name != home, "already tried (failover): elsewhere"
    pool.report_failure(pool.backends[home], "timeout")  # its last request failed: suspect
    pool.backends[home].healthy = True
    aff = Affinity(ring, "k", 1.25)
    assert pool.choose(NAMES, affinity=aff).name != home and aff.kept

    for n in NAMES:
        pool.backends[n].healthy = False
    aff = Affinity(ring, "k", 1.25)
    assert pool.choose(NAMES, affinity=aff) is None and not aff.kept
