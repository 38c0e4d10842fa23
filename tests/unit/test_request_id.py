"""Request ids: the caller's X-Request-Id when usable, a generated one otherwise, unique while in flight."""

from __future__ import annotations

import gc
import re

import pytest

from gateway.request_id import MAX_LENGTH, RequestIds


class Carrier:
    """Stands for the request object that holds an id in flight."""


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc", True),
        ("Trace-01:span.7_x", True),
        ("0" * MAX_LENGTH, True),
        ("0" * (MAX_LENGTH + 1), False),
        ("", False),
        ("a b", False),
        ("a\n", False),
        ("a/b", False),
        ('a"b', False),
        ("\u00e9", False),
        (None, False),
    ],
)
def test_an_incoming_id_is_kept_only_when_valid(given: str | None, kept: bool) -> None:
    rid = RequestIds().assign({} if given is None else {"x-request-id": given})
    if kept:
        assert rid == given
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)


def test_an_id_in_flight_gets_a_suffix_and_is_free_again_when_its_request_is_gone() -> None:
    ids = RequestIds()
    first = Carrier()
    ids.hold(ids.assign({"x-request-id": "dup"}), first)

    second = ids.assign({"x-request-id": "dup"})
    assert re.fullmatch(r"dup-[0-9a-f]{8}", second)

    del first
    gc.collect()
    assert ids.assign({"x-request-id": "dup"}) == "dup"


def test_generated_ids_differ() -> None:
    ids = RequestIds()
    assert len({ids.assign({}) for _ in range(100)}) == 100
