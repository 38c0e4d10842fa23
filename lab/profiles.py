"""Profile files: the one place that writes and reads the rows of ``llm-gateway profile``.

A profile is JSONL, one row per measured (prompt, arm) pair, appended and flushed as each
request finishes::

    prompt_id      "gsm8k/00042"             task, split  "gsm8k", "train" | "test"
    arm, model, strategy, backend            from the x-route-* response headers
    correct        true | false | null       null: no label (MT-Bench) or an error
    prompt_tokens, output_tokens             from the usage chunk (null if none came)
    ttft_s         request sent -> first non-empty content delta (e2e_s if no content came)
    decode_tps     (output_tokens - 1) / (last content delta - first content delta); null when
                   fewer than 2 tokens or all content came in one burst (deltas < 2 ms apart)
    e2e_s          request sent -> end of stream
    finish_reason  "stop" | "length" | ...
    error          null, or why the row is unusable (HTTP status, in-stream error, wrong arm)
    text           the first 2,000 characters of the answer
    prompt         the prompt text (``llm-gateway train`` embeds it)

Optional (:data:`OPTIONAL_ROW_KEYS`; readers must accept rows without them)::

    spec_draft_tokens, spec_accepted_tokens   this request's draft and accepted tokens, from the
                   speculative backend's vLLM counters scraped around it: only when the profiler ran
                   one request at a time (``--concurrency 1 --backend-metrics``, :mod:`lab.profiling`)

Files are only ever appended to: a re-profiled pair's newer row replaces the older one for every
reader (:func:`latest_good`, :func:`load`). A sidecar ``<profile>.meta.json`` records every run
(:func:`write_meta`). :func:`load` turns files into the router's training input
(:class:`router.training.Row`, prompt texts, the arms' model and strategy labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lab.datasets import Prompt
from router.training import Row, circular_labels, latest_rows

TEXT_LIMIT = 2000
ROW_KEYS = (
    "prompt_id", "task", "split", "arm", "model", "strategy", "backend", "correct", "prompt_tokens",
    "output_tokens", "ttft_s", "decode_tps", "e2e_s", "finish_reason", "error", "text", "prompt",
)  # fmt: skip
OPTIONAL_ROW_KEYS = ("spec_draft_tokens", "spec_accepted_tokens")  # lab.spec_decode.SPEC_COUNTERS' order


# -- writing ----------------------------------------------------------------------------------------


def new_row(prompt: Prompt, arm: str) -> dict[str, Any]:
    """A row for ``prompt`` on ``arm``: every key of :data:`ROW_KEYS`, the measurements still ``None``."""
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(prompt_id=prompt.id, task=prompt.task, split=prompt.split, arm=arm, prompt=prompt.text, text="")
    return row


def open_for_append(path: Path) -> TextIO:
    """``path`` opened for appending rows (folders created); a half line a killed run left is ended first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a", encoding="utf-8")
    if fh.tell() > 0:
        with path.open("rb") as check:
            check.seek(-1, 2)
            if check.read(1) != b"\n":
                fh.write("\n")  # a killed run left half a line: do not glue the next row onto it
    return fh


def append(fh: TextIO, row: dict[str, Any]) -> None:
    """Write one row and flush it, so a crash loses at most the request in flight."""
    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    fh.flush()


# -- reading ----------------------------------------------------------------------------------------


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every row in ``lines``; a line cut short by a crash, or one that is not a row, is skipped."""
    rows: list[dict[str, Any]] = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict) and "prompt_id" in row and "arm" in row:
                rows.append(row)
    return rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All parseable rows of a profile file, in file order (none if it does not exist)."""
    return parse_lines(path.read_text(encoding="utf-8").splitlines()) if path.exists() else []


def latest_good(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last row without an error for each (prompt_id, arm)."""
    return {(r["prompt_id"], r["arm"]): r for r in rows if not r.get("error")}


def training_row(r: dict[str, Any]) -> Row | None:
    """The router's view of one row; ``None`` for a row with an error or without timings."""
    if r.get("error") or r.get("ttft_s") is None or r.get("e2e_s") is None:
        return None
    return Row(
        prompt_id=r["prompt_id"],
        task=r.get("task", ""),
        split=r.get("split", "train"),
        arm=r["arm"],
        correct=r.get("correct"),
        output_tokens=int(r.get("output_tokens") or 0),
        ttft_s=float(r["ttft_s"]),
        decode_tps=r.get("decode_tps"),
        e2e_s=float(r["e2e_s"]),
    )


def training_rows(rows: Iterable[dict[str, Any]]) -> list[Row]:
    """Usable rows as :class:`~router.training.Row`, multiple-choice items labelled over all their
    option orders (:func:`router.training.circular_labels`)."""
    return circular_labels([t for t in map(training_row, rows) if t is not None])


@dataclass
class Profiles:
    """What ``train`` and ``evaluate`` read from profile files.

    ``rows``: the last usable row per (prompt, arm); ``texts``: prompt text per id; ``sha256``: a hash
    of the files' bytes; ``arm_labels``: each arm's public model and strategy label (its last row's).
    """

    rows: list[Row] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    arm_labels: dict[str, tuple[str, str]] = field(default_factory=dict)


class ProfileError(ValueError):
    """Profile files that cannot train or evaluate a router (the message says why and what to do)."""


def load(paths: Iterable[str | Path]) -> Profiles:
    """Read profile files, later files and lines replacing earlier measurements of the same pair.

    Raises :class:`ProfileError` when a usable row has no prompt text (a profile from before the
    ``prompt`` field), ``OSError`` when a file cannot be read.
    """
    raw: list[dict[str, Any]] = []
    rows: list[Row] = []
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(data)
        file_rows = parse_lines(data.decode("utf-8").splitlines())
        rows += training_rows(file_rows)  # option orders are joined within a file
        raw += file_rows
    out = Profiles(rows=latest_rows(rows), sha256=digest.hexdigest())
    for r in raw:
        if isinstance(r.get("prompt"), str):
            out.texts.setdefault(r["prompt_id"], r["prompt"])
        if r.get("model") and r.get("strategy"):
            out.arm_labels[r["arm"]] = (r["model"], r["strategy"])
    missing = {r.prompt_id for r in out.rows} - set(out.texts)
    if missing:
        raise ProfileError(
            f"{len(missing)} profiled prompts have no 'prompt' text in the profile rows "
            f"(e.g. {sorted(missing)[0]}); re-run `llm-gateway profile` (it records the prompt text)"
        )
    return out


# -- the run sidecar --------------------------------------------------------------------------------


def meta_path(out: Path) -> Path:
    """The sidecar of a profile file: ``<out>.meta.json``."""
    return out.with_name(out.name + ".meta.json")


def write_meta(path: Path, run: dict[str, Any]) -> None:
    """Append ``run`` to the sidecar's ``runs`` and refresh the all-runs acceptance per arm."""
    meta: dict[str, Any] = {"runs": []}
    if path.exists():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and isinstance(loaded.get("runs"), list):
                meta = loaded
    meta["runs"].append(run)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in meta["runs"]:
        for arm, a in ((r.get("spec_decode") or {}).get("arms") or {}).items():
            totals[arm][0] += a.get("draft_tokens") or 0
            totals[arm][1] += a.get("accepted_tokens") or 0
    meta["spec_decode_acceptance"] = {
        arm: {"draft_tokens": d, "accepted_tokens": acc, "acceptance_rate": acc / d if d > 0 else None}
        for arm, (d, acc) in sorted(totals.items())
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
