"""Speculative-decoding acceptance, read from the vLLM backends' ``/metrics`` counters around a profile
run (:func:`acceptance`) or around one request (:func:`row_counters`)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict
from typing import Any

import httpx

from lab.profiles import OPTIONAL_ROW_KEYS

SPEC_COUNTERS = {
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
}


def parse_spec_counters(exposition: str) -> dict[str, float]:
    """Sum each of :data:`SPEC_COUNTERS` over its label sets in a Prometheus text exposition."""
    out = dict.fromkeys(SPEC_COUNTERS, 0.0)
    seen = False
    for key, metric in SPEC_COUNTERS.items():
        pattern = re.compile(rf"^{re.escape(metric)}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
        for value in pattern.findall(exposition):
            with contextlib.suppress(ValueError):
                out[key] += float(value)
                seen = True
    return out if seen else {}


async def scrape(client: httpx.AsyncClient, urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Speculative-decoding counters per backend; ``{"error": ...}`` where a scrape fails."""

    async def one(url: str) -> dict[str, Any]:
        try:
            resp = await client.get(url, timeout=10.0)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return dict(parse_spec_counters(resp.text))

    results = await asyncio.gather(*(one(u) for u in urls.values()))
    return dict(zip(urls, results, strict=True))


def acceptance(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Counter deltas per backend, and per arm over the backends its rows went to.

    A backend shared by several arms, or also serving other traffic during the run, mixes them:
    the arm entry says which backends it summed and whether any was shared.
    """
    backends: dict[str, dict[str, Any]] = {}
    for name, b in before.items():
        a = after.get(name, {})
        if "error" in b or "error" in a or not b or not a:
            backends[name] = {"error": b.get("error") or a.get("error") or "no speculative-decoding counters"}
            continue
        d = {k: a[k] - b[k] for k in SPEC_COUNTERS}
        rate = d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] > 0 else None
        backends[name] = {**d, "acceptance_rate": rate}
    arms_of: dict[str, set[str]] = defaultdict(set)
    used: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("backend"):
            arms_of[r["backend"]].add(r["arm"])
            used[r["arm"]].add(r["backend"])
    arms: dict[str, Any] = {}
    for arm, names in sorted(used.items()):
        measured = [n for n in sorted(names) if n in backends and "error" not in backends[n]]
        draft = sum(backends[n]["draft_tokens"] for n in measured)
        accepted = sum(backends[n]["accepted_tokens"] for n in measured)
        arms[arm] = {
            "backends": measured,
            "unmeasured_backends": sorted(names - set(measured)),
            "shared": any(len(arms_of[n]) > 1 for n in measured),
            "draft_tokens": draft,
            "accepted_tokens": accepted,
            "acceptance_rate": accepted / draft if draft > 0 else None,
        }
    return {"backends": backends, "arms": arms}


ROW_FIELDS = dict(zip(SPEC_COUNTERS, OPTIONAL_ROW_KEYS, strict=True))  # counter -> row field, in that order


def row_counters(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], backend: str | None
) -> dict[str, int]:
    """One request's ``spec_draft_tokens`` and ``spec_accepted_tokens``: the deltas of ``backend``'s
    counters between a scrape just before it and one just after, when nothing else ran on that
    backend in between (the caller's to ensure). Empty when the backend is unknown, was not scraped,
    a scrape failed, it has no speculative-decoding counters (a plain server), or a counter went
    backwards (the server restarted)."""
    b, a = before.get(backend or ""), after.get(backend or "")
    if not b or not a or "error" in b or "error" in a:
        return {}
    delta = {field: a[key] - b[key] for key, field in ROW_FIELDS.items()}
    if any(v < 0 for v in delta.values()):
        return {}
    return {field: round(v) for field, v in delta.items()}
