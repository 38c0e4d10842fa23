"""IndexedHeaders answers lookups as Starlette's Headers does, from a dict built once."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers

from gateway.lean_app import GatewayRequest, IndexedHeaders

RAW = [
    (b"host", b"gateway.test"),
    (b"x-route-accuracy", b"high"),
    (b"authorization", b"Bearer one"),
    (b"authorization", b"Bearer two"),  # repeated: the first wins
    (b"x-latin", "caf\u00e9".encode("latin-1")),
    (b"x-empty", b""),
]


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": list(RAW)}


@pytest.mark.parametrize("key", ["host", "HOST", "Authorization", "x-route-accuracy", "x-latin", "x-empty", "absent"])
def test_lookups_match_starlette_headers(key: str) -> None:
    ours, theirs = IndexedHeaders(_scope()), Headers(scope=_scope())
    assert ours.get(key) == theirs.get(key)
    assert ours.get(key, "dflt") == theirs.get(key, "dflt")
    assert (key in ours) == (key in theirs)
    if key in theirs:
        assert ours[key] == theirs[key]
    else:
        with pytest.raises(KeyError):
            ours[key]


def test_the_rest_of_the_mapping_is_starlettes() -> None:
    ours, theirs = IndexedHeaders(_scope()), Headers(scope=_scope())
    assert ours.getlist("authorization") == ["Bearer one", "Bearer two"]
    assert ours.items() == theirs.items() and len(ours) == len(theirs) and ours == theirs
    assert 3 not in ours


def test_the_request_builds_them_once() -> None:
    request = GatewayRequest(_scope())
    assert isinstance(request.headers, IndexedHeaders)
    assert request.headers is request.headers
    assert request.headers["authorization"] == "Bearer one"
