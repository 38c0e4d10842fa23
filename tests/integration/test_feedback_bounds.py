"""``POST /v1/feedback`` under abuse (issue 18, item 5): sizes and rates are bounded, a rating is
scoped to the key that made the request, the line names that key, and the JSONL stays line-safe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_vllm import MakeGateway, request_body

from gateway.auth import hash_key

KEY_A, KEY_B = "sk-fb-team-a-1x", "sk-fb-team-b-2y"
KEYS = {
    "keys": [
        {"name": "team-a", "sha256": hash_key(KEY_A), "models": ["smol"]},
        {"name": "team-b", "sha256": hash_key(KEY_B), "models": ["coder"]},
    ]
}
A, B = {"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_B}"}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("labels", "param"),
    [
        ({"t": "x" * 65}, "labels.t"),
        ({"k" * 65: "x"}, "labels"),
        ({f"l{i}": "x" for i in range(17)}, "labels"),
    ],
    ids=["long-value", "long-name", "too-many"],
)
async def test_labels_are_bounded(
    make_gateway: MakeGateway, tmp_path: Path, labels: dict[str, str], param: str
) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path)}) as gw:
        rid = (await gw.generate()).headers["x-request-id"]
        r = await gw.client.post("/v1/feedback", json={"id": rid, "rating": 1, "labels": labels})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith(param)
        ok = await gw.client.post("/v1/feedback", json={"id": rid, "rating": 1, "labels": {"t": "x" * 64}})
        assert ok.status_code == 200, ok.text
        assert len(lines(path)) == 1


async def test_a_large_feedback_body_is_413_and_writes_nothing(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path)}) as gw:
        rid = (await gw.generate()).headers["x-request-id"]
        big = {"id": rid, "rating": 1, "comment": "x" * 4000, "pad": "y" * 40_000}
        r = await gw.client.post("/v1/feedback", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert not path.exists()


async def test_a_rating_for_an_unknown_id_is_404_and_not_written(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path)}) as gw:
        r = await gw.client.post("/v1/feedback", json={"id": "chatcmpl-forgotten", "rating": 0.5})
        assert r.status_code == 404, r.text
        assert r.json()["error"] == {
            "message": "no answer with id 'chatcmpl-forgotten' is known to this gateway",
            "type": "invalid_request_error",
            "param": "id",
            "code": "response_not_found",
        }
        assert not path.exists()


async def test_a_key_cannot_rate_another_keys_answer(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path)}, auth=KEYS) as gw:
        mine = await gw.client.post("/v1/chat/completions", json=request_body("chat", "smol"), headers=A)
        assert mine.status_code == 200, mine.text
        answer_id = mine.json()["id"]
        theirs = await gw.client.post("/v1/feedback", json={"id": answer_id, "rating": 0}, headers=B)
        unknown = await gw.client.post("/v1/feedback", json={"id": "chatcmpl-nothing", "rating": 0}, headers=B)
        assert theirs.status_code == unknown.status_code == 404
        shape = theirs.json()["error"]
        assert shape == {**unknown.json()["error"], "message": shape["message"]}
        assert shape["message"] == unknown.json()["error"]["message"].replace("chatcmpl-nothing", answer_id)
        assert "smol" not in theirs.text and mine.headers["x-route-arm"] not in theirs.text
        assert not path.exists()
        ok = await gw.client.post("/v1/feedback", json={"id": answer_id, "rating": 1}, headers=A)
        assert ok.status_code == 200 and ok.json()["arm"] == mine.headers["x-route-arm"]
        (line,) = lines(path)
        assert line["key"] == "team-a" and line["route"]["key"] == "team-a"
        assert KEY_A not in path.read_text()


async def test_line_separators_are_escaped_in_the_jsonl(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path)}) as gw:
        rid = (await gw.generate()).headers["x-request-id"]
        text = "one\u2028two\u2029three"
        r = await gw.client.post("/v1/feedback", json={"id": rid, "rating": 1, "comment": text, "labels": {"t": text}})
        assert r.status_code == 200, r.text
        raw = path.read_bytes()
        assert "\u2028".encode() not in raw and "\u2029".encode() not in raw
        assert raw.count(b"\n") == 1 and b"\\u2028" in raw
        (line,) = lines(path)
        assert line["comment"] == text and line["labels"] == {"t": text}


async def test_feedback_has_its_own_per_key_rate_limit(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path), "rpm": 2}, auth=KEYS) as gw:
        rid = (await gw.client.post("/v1/chat/completions", json=request_body("chat"), headers=A)).json()["id"]
        codes = [(await gw.client.post("/v1/feedback", json={"id": rid, "rating": 1}, headers=A)) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        err = codes[2].json()["error"]
        assert err["code"] == "rate_limit_exceeded" and int(codes[2].headers["retry-after"]) >= 1
        assert gw.metric("gateway_rejected_requests_total", reason="rate_limit_requests", key="team-a") == 1
        # another key has its own budget (its rating of an unknown id is a 404, not a 429)
        other = await gw.client.post("/v1/feedback", json={"id": "x", "rating": 1}, headers=B)
        assert other.status_code == 404
        assert len(lines(path)) == 2


async def test_anonymous_callers_share_one_feedback_budget(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    async with make_gateway(feedback={"path": str(path), "anonymous_rpm": 3}) as gw:
        rid = (await gw.generate()).headers["x-request-id"]
        codes = [(await gw.client.post("/v1/feedback", json={"id": rid, "rating": 1})).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        unknown = await gw.client.post("/v1/feedback", json={"id": "never", "rating": 1})
        assert unknown.status_code == 429  # a spent budget is checked before the id is looked up
        assert len(lines(path)) == 3
