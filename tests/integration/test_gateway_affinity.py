"""Replica affinity through the app: arm ``smol-plain`` (backends b1, b2) with ``affinity`` set keeps a
session, or a conversation, on one backend; least-loaded (the default) does not care; a backend that
goes down moves only its own keys."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import httpx
from fake_vllm import CONFIG, Gateway, MakeGateway, Upstreams

SYSTEM = {"role": "system", "content": "You are terse."}


def arms_with(affinity: Any) -> list[dict[str, Any]]:
    arms = copy.deepcopy(CONFIG["arms"])
    arms[0]["affinity"] = affinity
    return arms


async def backend_of(gw: Gateway, **fields: Any) -> str:
    r = await gw.generate(**fields)
    assert r.status_code == 200, r.text
    return r.headers["x-route-backend"]


async def test_a_session_stays_on_its_replica_and_sessions_spread(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=arms_with("session")) as gw:
        homes = {}
        for i in range(40):
            session = f"conversation-{i}"
            r = await gw.client.post(
                "/v1/chat/completions",
                json={"model": "smol", "messages": [{"role": "user", "content": f"turn {i}"}]},
                headers={"x-session-id": session},
            )
            homes[session] = r.headers["x-route-backend"]
            for turn in range(3):  # later turns, another text: the same replica
                again = await gw.client.post(
                    "/v1/chat/completions",
                    json={"model": "smol", "messages": [{"role": "user", "content": f"turn {turn}"}]},
                    headers={"x-session-id": session},
                )
                assert again.headers["x-route-backend"] == homes[session]
        assert set(homes.values()) == {"b1", "b2"}, "sessions spread over both replicas"
        assert gw.metric("gateway_affinity_total", arm="smol-plain", outcome="kept") == 160
        # the OpenAI `user` field is a session key too
        by_user = {await backend_of(gw, user="alice") for _ in range(5)}
        assert len(by_user) == 1


async def test_a_conversation_keeps_its_replica_by_its_opening(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=arms_with({"mode": "prefix", "prefix_chars": 256})) as gw:
        for i in range(10):
            opening = [SYSTEM, {"role": "user", "content": f"Plan trip number {i}."}]
            first = await backend_of(gw, messages=opening)
            later = [*opening, {"role": "assistant", "content": "Day 1: ..."}, {"role": "user", "content": "Day 2?"}]
            assert await backend_of(gw, messages=later) == first


async def test_without_affinity_ties_go_to_the_first_backend(gw: Gateway) -> None:
    for i in range(5):
        r = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-session-id": f"s{i}"},
        )
        assert r.headers["x-route-backend"] == "b1"
    assert gw.metric("gateway_affinity_total", arm="smol-plain", outcome="kept") is None


async def test_a_replica_that_goes_down_moves_only_its_own_sessions(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    async with make_gateway(arms=arms_with("session")) as gw:
        sessions = [f"s{i}" for i in range(30)]
        before = {s: await backend_of(gw, user=s) for s in sessions}
        upstreams["b2"].fail = "connect"  # b2 dies: its sessions fail over to b1, b1's stay
        during = {s: await backend_of(gw, user=s) for s in sessions}
        assert all(during[s] == "b1" for s in sessions)
        upstreams["b2"].fail = None
        await gw.pool.check_all()  # b2 back
        after = {s: await backend_of(gw, user=s) for s in sessions}
        assert after == before, "back up: every session returns to its replica"


async def test_a_burst_spreads_over_arms(make_gateway: MakeGateway, upstreams: Upstreams) -> None:
    """Requests that arrive together each count as load on their arm from the decision on (pending,
    then in flight on the backend), so least-loaded routing spreads them over both arms. The fake
    upstreams answer after a turn of the event loop, as a real socket does (the mock transport would
    otherwise answer each request before the next is even read)."""
    for name in ("b1", "b2"):
        fake = upstreams[name]

        async def after_a_turn(request: httpx.Request, handle: Any = fake.handle) -> httpx.Response:
            await asyncio.sleep(0)
            return await handle(request)

        fake.handle = after_a_turn  # type: ignore[method-assign]
    arms = [
        {"name": "smol-a", "model": "smol", "backends": ["b1"]},
        {"name": "smol-b", "model": "smol", "backends": ["b2"]},
        copy.deepcopy(CONFIG["arms"][1]),
    ]
    async with make_gateway(arms=arms) as gw:
        answers = await asyncio.gather(*(gw.generate() for _ in range(10)))
        routed = Counter(r.headers["x-route-arm"] for r in answers)
        assert routed == {"smol-a": 5, "smol-b": 5}
        assert all(live.pending == 0 for live in gw.app.state.catalog.arms.values()), "none left pending"
