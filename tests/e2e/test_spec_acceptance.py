"""N-gram speculation on the real stack: vLLM accepts more drafts where the answer copies the prompt,
and the router predicts the speculative arm faster there.

Sent directly to the ``smol-ngram4`` server (SmolLM2-135M with prompt lookup, k = 4), one at a time,
temperature 0, with its spec-decode counters scraped just before and just after each request: a
copy-heavy prompt (repeat a 30-line function, then add a docstring) and a free-text one (a story).
Then a gateway of its own, in front of the stack with the shipped artifact, is asked for both
prompts by dry run (``POST /v1/route``): the n-gram arm's predicted ``speedup`` must be higher for
the copy prompt, and under ``prefer: speed`` the choice between SmolLM2's two strategies follows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lab.spec_decode import parse_spec_counters

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BACKEND = "smol-ngram4"
PLAIN_ARM, NGRAM_ARM, MODEL = "smollm2-plain", "smollm2-spec-ngram4", "smollm2-135m"
MAX_TOKENS = 96

FUNCTION = """def summarize_orders(orders, currency="EUR"):
    totals = {}
    counts = {}
    largest = None
    for order in orders:
        customer = order["customer"]
        amount = order["amount"]
        if order.get("currency", currency) != currency:
            continue
        if amount <= 0:
            continue
        totals[customer] = totals.get(customer, 0) + amount
        counts[customer] = counts.get(customer, 0) + 1
        if largest is None or amount > largest["amount"]:
            largest = order
    report = []
    for customer in sorted(totals):
        total = totals[customer]
        count = counts[customer]
        average = total / count
        report.append(
            {
                "customer": customer,
                "total": round(total, 2),
                "orders": count,
                "average": round(average, 2),
            }
        )
    report.sort(key=lambda row: row["total"], reverse=True)
    return {"currency": currency, "customers": report, "largest": largest}
"""
COPY = "Repeat the following code exactly, then add a docstring:\n\n```python\n" + FUNCTION + "```"
FREE = "Write a short story about a lighthouse keeper."


def served_model() -> str:
    spec = yaml.safe_load((ROOT / "deploy" / "local" / "backends.yaml").read_text())
    return str(next(s["served_model"] for s in spec["servers"] if s["name"] == BACKEND))


def gauges(url: str) -> float:
    """Requests running or waiting on the server."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def measure(url: str, prompt: str) -> dict[str, float]:
    """One request alone on the server, between two counter scrapes: its draft and accepted tokens."""
    deadline = time.monotonic() + 120
    while gauges(url) > 0:  # another module's request still finishing: its tokens are not ours
        assert time.monotonic() < deadline, "the n-gram server never went idle"
        time.sleep(0.5)
    before = parse_spec_counters(httpx.get(url + "/metrics", timeout=10).text)
    body = {
        "model": served_model(),
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    after = parse_spec_counters(httpx.get(url + "/metrics", timeout=10).text)
    assert before and after, "the n-gram server exposes no spec-decode counters"
    draft = after["draft_tokens"] - before["draft_tokens"]
    accepted = after["accepted_tokens"] - before["accepted_tokens"]
    tokens = resp.json()["usage"]["completion_tokens"]
    return {
        "draft": draft,
        "accepted": accepted,
        "tokens": tokens,
        "acceptance": accepted / draft if draft else 0.0,  # nothing drafted: nothing accepted
        "accepted_per_token": accepted / tokens,
    }


@pytest.fixture(scope="module")
def acceptance(backend_urls: dict[str, str]) -> dict[str, dict[str, float]]:
    url = backend_urls[BACKEND]
    return {"copy": measure(url, COPY), "free": measure(url, FREE)}


def test_acceptance_is_higher_on_a_copy_prompt(acceptance: dict[str, dict[str, float]]) -> None:
    copy, free = acceptance["copy"], acceptance["free"]
    print(f"\nn-gram acceptance: copy {copy}, free text {free}")
    assert copy["draft"] > 0 and copy["accepted"] > 0
    assert copy["acceptance"] > free["acceptance"], acceptance
    assert copy["accepted_per_token"] > free["accepted_per_token"], acceptance


def dry_run(gateway_url: str, content: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "route": {"prefer": "speed"}}
    resp = httpx.post(gateway_url + "/v1/route", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_the_router_predicts_the_ngram_arm_faster_where_acceptance_is_higher(
    acceptance: dict[str, dict[str, float]], fresh_gateway_url: str
) -> None:
    """The shipped artifact's speed heads, on the prompts whose acceptance was just measured."""
    copy, free = dry_run(fresh_gateway_url, COPY), dry_run(fresh_gateway_url, FREE)
    assert set(copy["predictions"]) == set(free["predictions"]) == {PLAIN_ARM, NGRAM_ARM}
    up_copy = copy["predictions"][NGRAM_ARM]["speedup"]
    up_free = free["predictions"][NGRAM_ARM]["speedup"]
    print(f"\npredicted n-gram speed-up: copy {up_copy}, free text {up_free}")
    assert acceptance["copy"]["acceptance"] > acceptance["free"]["acceptance"]
    assert up_copy > up_free, (up_copy, up_free)
    assert copy["arm"] == NGRAM_ARM and copy["strategy"] == "speculative-ngram-k4"
    assert copy["reason"] == free["reason"] == "prefer-speed"
    if up_free < 1.0:  # predicted slower than plain on free text: the choice must say so too
        assert free["arm"] == PLAIN_ARM
