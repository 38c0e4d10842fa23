"""Training rows from served traffic: the decision log joined with the ratings of ``POST /v1/feedback``.

``llm-gateway train --from-log LOG [--feedback FEEDBACK]`` reads both files (see
:mod:`gateway.decision_log` and :mod:`gateway.feedback` for their lines). Every answered request
(status 200) of the log becomes one :class:`~router.training.Row` for the arm that answered it:

* prompt id ``log/<first 16 hex of the prompt's sha256>#<request id>``: one row per request, and
  requests with the same prompt share a cross-validation fold (:func:`router.prompt_ids.group_of`);
* quality label: the request's rating ``>= 0.5`` (its last rating, if rated more than once), ``None``
  when unrated — unrated requests still teach length and latency;
* timings from the log: ``latency_s`` (end to end), ``ttft_s`` (streams only; NaN otherwise, see
  :func:`router.training.train`), ``tokens_per_s``, ``output_tokens``;
* sample weight ``1 / propensity``, clipped to :data:`MAX_WEIGHT`, so arms the policy explored into
  rarely count as much as they would have under uniform exploration (inverse propensity
  weighting); 1 for a request another arm answered after a failover (outside the policy's draw).

Ratings are matched by request id: the feedback line's own join (``route.request_id``) when it has
one, else its ``id`` as given, without the ``chatcmpl-`` / ``cmpl-`` prefix, or without a pdr stage
suffix (``-<n>``). Ratings of requests the log does not hold are ignored (counted in the report).

A prompt's vector is the logged ``features`` (the cheap features, when the serving artifact was
features-only) or its text (logged when ``feedback.store_prompts`` is on), embedded again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.feedback import ID_PREFIXES
from router.features import FEATURE_NAMES
from router.training import Row

MAX_WEIGHT = 20.0
TASK = "log"


@dataclass
class Traffic:
    """What the log teaches: rows, and per prompt id its logged features, text, length and weight."""

    rows: list[Row] = field(default_factory=list)
    features: dict[str, list[float]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    kchars: dict[str, float] = field(default_factory=dict)
    weights: dict[tuple[str, str], float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def keep(self, prompt_ids: set[str]) -> None:
        """Drop every row whose prompt is not in ``prompt_ids`` (no usable vector)."""
        self.report["dropped_without_vector"] = sum(r.prompt_id not in prompt_ids for r in self.rows)
        self.rows = [r for r in self.rows if r.prompt_id in prompt_ids]


def _json_lines(lines: Iterable[str], source: str) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}, line {n}: not JSON ({exc})") from None
        if isinstance(doc, dict):
            yield doc


def _candidates(rating: dict[str, Any]) -> list[str]:
    """The request ids a feedback line may refer to, most specific first."""
    out = []
    route = rating.get("route")
    if isinstance(route, dict) and isinstance(route.get("request_id"), str):
        out.append(route["request_id"])
    rid = str(rating.get("id", ""))
    out.append(rid)
    for prefix in ID_PREFIXES:
        if rid.startswith(prefix):
            rid = rid[len(prefix) :]
            out.append(rid)
            break
    out.append(rid.rsplit("-", 1)[0])  # a pdr stage: <request id>-<n>
    return out


def ratings_by_request(
    decisions: dict[str, dict[str, Any]], feedback: Iterable[dict[str, Any]]
) -> tuple[dict[str, float], int]:
    """The last rating per logged request id, and how many ratings matched no logged request."""
    rated: dict[str, float] = {}
    unmatched = 0
    for line in feedback:
        rating = line.get("rating")
        found = next((c for c in _candidates(line) if c in decisions), None)
        if found is None or not isinstance(rating, int | float) or isinstance(rating, bool):
            unmatched += 1
            continue
        rated[found] = float(rating)
    return rated, unmatched


def join(decisions: Iterable[dict[str, Any]], feedback: Iterable[dict[str, Any]]) -> Traffic:
    """Rows, vectors' sources and weights of the answered requests (see the module docstring)."""
    by_id: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if isinstance(d.get("request_id"), str):
            by_id[d["request_id"]] = d
    rated, unmatched = ratings_by_request(by_id, feedback)
    out = Traffic()
    for rid, d in by_id.items():
        arm, latency = d.get("served_arm"), d.get("latency_s")
        if d.get("status") != 200 or not isinstance(arm, str) or latency is None or d.get("output_tokens") is None:
            continue
        pid = f"{TASK}/{str(d.get('prompt_sha256', ''))[:16]}#{rid}"
        rating = rated.get(rid)
        ttft = d.get("ttft_s")
        out.rows.append(
            Row(
                prompt_id=pid,
                task=TASK,
                split="train",
                arm=arm,
                correct=None if rating is None else rating >= 0.5,
                output_tokens=int(d["output_tokens"]),
                ttft_s=math.nan if ttft is None else float(ttft),
                decode_tps=d.get("tokens_per_s"),
                e2e_s=float(latency),
            )
        )
        if isinstance(d.get("features"), list):
            out.features[pid] = [float(v) for v in d["features"]]
        if isinstance(d.get("prompt"), str):
            out.texts[pid] = d["prompt"]
        out.kchars[pid] = int(d.get("prompt_chars") or len(d.get("prompt") or "")) / 1000
        propensity = float(d.get("propensity") or 1.0)
        weight = min(MAX_WEIGHT, 1.0 / propensity) if propensity > 0 else MAX_WEIGHT
        out.weights[(pid, arm)] = weight if arm == d.get("arm") else 1.0
    out.report = {
        "logged_requests": len(by_id),
        "answered_rows": len(out.rows),
        "rated_rows": sum(r.correct is not None for r in out.rows),
        "unmatched_ratings": unmatched,
    }
    return out


def read_traffic(log_path: str | Path, feedback_path: str | Path | None = None) -> tuple[Traffic, str]:
    """:func:`join` of the two files, and a sha256 of their bytes (for the artifact's metadata)."""
    digest = hashlib.sha256()
    data = Path(log_path).read_bytes()
    digest.update(data)
    decisions = _json_lines(data.decode().splitlines(), str(log_path))
    feedback: Iterable[dict[str, Any]] = ()
    if feedback_path is not None:
        fb = Path(feedback_path).read_bytes()
        digest.update(fb)
        feedback = list(_json_lines(fb.decode().splitlines(), str(feedback_path)))
    return join(decisions, feedback), digest.hexdigest()


def training_traffic(
    log_path: str | Path, feedback_path: str | Path | None, encoder: str, texts: dict[str, str]
) -> tuple[Traffic, dict[str, np.ndarray], dict[str, Any]]:
    """What ``train --from-log`` adds: the traffic (rows without a usable vector dropped), the
    vectors taken from the logged features (encoder ``none`` only), and metadata for the artifact.
    Texts of the logged prompts that need embedding are added to ``texts``. ``ValueError`` when the
    logged features are not this version's or no logged prompt has a usable vector."""
    traffic, digest = read_traffic(log_path, feedback_path)
    given = {}
    if encoder == "none":
        for pid, v in traffic.features.items():
            if len(v) != len(FEATURE_NAMES):
                raise ValueError(
                    f"{log_path}: logged features have {len(v)} entries, this version computes {len(FEATURE_NAMES)}"
                )
            given[pid] = np.array(v, dtype=np.float64)
    traffic.keep(set(given) | set(traffic.texts))
    texts.update({pid: t for pid, t in traffic.texts.items() if pid not in given})
    if not traffic.rows and traffic.report["answered_rows"]:
        raise ValueError(
            "no logged prompt has a usable vector: train with --encoder none when the serving artifact was "
            "features-only (it logs its features), or serve with feedback.store_prompts: true"
        )
    meta = {"path": str(log_path), "feedback": None if feedback_path is None else str(feedback_path)}
    return traffic, given, {**meta, "sha256": digest, **traffic.report}
