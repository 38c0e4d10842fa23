"""A generation request's id: the caller's ``X-Request-Id`` when it is usable, else a generated one.

The id is the ``x-request-id`` response header (errors included), the ``X-Request-Id`` sent upstream
(vLLM names its answer after it: ``chatcmpl-<id>``), the key ``POST /v1/feedback`` takes, the
``request_id`` of the decision log and of the JSON request log. So a caller that sends its own id
(a trace id from its proxy, say) finds the same id in every one of them.

An incoming id is used as it is when it matches :data:`VALID` (1 to 128 characters of
``A-Z a-z 0-9 . _ : -``): it goes into headers, log lines and file names of other tools, so
nothing else may pass (no spaces, quotes, slashes or control characters; bounded so a client
cannot make every response and log line large). Anything else is not an error: the request gets
a generated id (32 hex digits), as when none is sent.

vLLM refuses a second request while one with the same id is in flight on it, and the decision log
and feedback key on the id, so an id already in flight on this gateway gets a suffix
(``<id>-<8 hex digits>``): the caller keeps a prefix to correlate, the backend sees unique ids.
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Mapping

HEADER = "x-request-id"
MAX_LENGTH = 128
VALID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_LENGTH}}}")


def generated() -> str:
    return uuid.uuid4().hex


class RequestIds:
    """Assigns the ids of one app's requests. Event-loop only (not thread-safe).

    In-flight ids are held weakly by the object that carries the request
    (:class:`gateway.admission.Exchange`): an id is free again once its request is gone.
    """

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()

    def assign(self, headers: Mapping[str, str]) -> str:
        """The id for a request with these ``headers`` (see the module docstring)."""
        given = headers.get(HEADER)
        if given is None or VALID.fullmatch(given) is None:
            return generated()
        if given in self._live:
            return f"{given}-{uuid.uuid4().hex[:8]}"
        return given

    def hold(self, request_id: str, owner: object) -> None:
        """Mark ``request_id`` in flight for as long as ``owner`` lives."""
        self._live[request_id] = owner
