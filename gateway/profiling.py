"""``llm-gateway profile``: measure every arm on offline prompt sets, through the gateway.

Each (prompt, arm) pair is one streaming chat request with ``model: "auto"`` pinned to the arm
(``route.arm``), temperature 0 and ``stream_options.include_usage``, timed on the client side
as a user would see it, scored for correctness (:mod:`router.scoring`) and appended to the
output as one JSONL row, flushed at once::

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

Resumable: pairs that already have a row without an error are skipped; error rows are retried
(the new row is appended, readers take the last good row). Ctrl-C stops cleanly: in-flight
requests are dropped, everything finished is on disk. A sidecar ``<out>.meta.json`` records
every run: command line, seed, times, data-package versions and, with ``--backend-metrics``,
the speculative-decoding acceptance rate per arm from the backends' vLLM counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import re
import shlex
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from router.datasets import Prompt, data_versions, load_prompts
from router.scoring import score

TEXT_LIMIT = 2000
MIN_DECODE_SPAN_S = 0.002
SPEC_COUNTERS = {
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
}
ROW_KEYS = (
    "prompt_id", "task", "split", "arm", "model", "strategy", "backend", "correct", "prompt_tokens",
    "output_tokens", "ttft_s", "decode_tps", "e2e_s", "finish_reason", "error", "text", "prompt",
)  # fmt: skip


@dataclass(frozen=True)
class ProfileOptions:
    """What to profile. ``backend_metrics`` maps a backend name (as in ``x-route-backend``) to its
    base URL or ``/metrics`` URL; ``command`` is recorded in the meta file."""

    gateway: str
    arms: tuple[str, ...]
    tasks: tuple[str, ...]
    per_task: int
    out: Path
    seed: int = 0
    split: str = "all"
    concurrency: int = 4
    max_tokens: int = 256
    timeout_s: float = 300.0
    backend_metrics: dict[str, str] = field(default_factory=dict)
    command: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProfileOptions:
        return cls(
            gateway=args.gateway.rstrip("/"),
            arms=_csv(args.arms),
            tasks=_csv(args.tasks),
            per_task=args.per_task,
            out=Path(args.out),
            seed=args.seed,
            split=args.split,
            concurrency=args.concurrency,
            max_tokens=args.max_tokens,
            timeout_s=args.timeout,
            backend_metrics=parse_backend_metrics(args.backend_metrics or ""),
            command=shlex.join(["llm-gateway", *sys.argv[1:]]),
        )


@dataclass
class RunResult:
    written: int = 0
    errors: int = 0
    interrupted: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_backend_metrics(value: str) -> dict[str, str]:
    """``"a=http://h:1,b=http://h:2"`` -> ``{"a": "http://h:1/metrics", ...}``; ``ValueError`` if malformed."""
    out: dict[str, str] = {}
    for item in _csv(value):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"--backend-metrics: expected NAME=http://HOST:PORT, got '{item}'")
        url = url.strip().rstrip("/")
        out[name.strip()] = url if url.endswith("/metrics") else url + "/metrics"
    return out


# -- the output file ----------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All parseable rows of a profile file (a line cut short by a crash is skipped)."""
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict) and "prompt_id" in row and "arm" in row:
                    rows.append(row)
    return rows


def latest_good(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last row without an error for each (prompt_id, arm)."""
    return {(r["prompt_id"], r["arm"]): r for r in rows if not r.get("error")}


def _open_for_append(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a", encoding="utf-8")
    if fh.tell() > 0:
        with path.open("rb") as check:
            check.seek(-1, 2)
            if check.read(1) != b"\n":
                fh.write("\n")  # a killed run left half a line: do not glue the next row onto it
    return fh


# -- one request ---------------------------------------------------------------------------------


def request_body(prompt: Prompt, arm: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": prompt.messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "route": {"arm": arm},
    }


def _error_message(event: dict[str, Any]) -> str:
    err = event.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


async def measure(
    client: httpx.AsyncClient, gateway: str, prompt: Prompt, arm: str, max_tokens: int
) -> tuple[dict[str, Any], str]:
    """Send one pinned streaming request; the row (without ``correct``) and the full answer text.

    Never raises for transport or protocol failures: they become the row's ``error``.
    """
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(prompt_id=prompt.id, task=prompt.task, split=prompt.split, arm=arm, prompt=prompt.text, text="")
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    first = last = None
    error: str | None = None
    start = time.perf_counter()
    try:
        async with client.stream(
            "POST", gateway + "/v1/chat/completions", json=request_body(prompt, arm, max_tokens)
        ) as resp:
            h = resp.headers
            row.update(
                model=h.get("x-route-model"), strategy=h.get("x-route-strategy"), backend=h.get("x-route-backend")
            )
            if resp.status_code != 200:
                body = (await resp.aread())[:300].decode("utf-8", "replace")
                error = f"HTTP {resp.status_code}: {body}"
            else:
                served = h.get("x-route-arm")
                if served is not None and served != arm:
                    error = f"pinned arm '{arm}' but the gateway served '{served}' ({h.get('x-route-reason')})"
                done = False
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError:
                        event = None
                    if not isinstance(event, dict):
                        error = f"unparseable stream event: {data[:200]}"
                        break
                    if "error" in event:
                        error = "in-stream error: " + _error_message(event)
                        break
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            now = time.perf_counter()
                            first = first or now
                            last = now
                            pieces.append(content)
                        row["finish_reason"] = choice.get("finish_reason") or row["finish_reason"]
                if not done and error is None:
                    error = "the stream ended before data: [DONE]"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    text = "".join(pieces)
    out_tokens = usage.get("completion_tokens")
    row.update(
        prompt_tokens=usage.get("prompt_tokens"),
        output_tokens=out_tokens,
        ttft_s=(first - start) if first is not None else end - start,
        decode_tps=_decode_tps(out_tokens, first, last),
        e2e_s=end - start,
        error=error,
        text=text[:TEXT_LIMIT],
    )
    return row, text


def _decode_tps(out_tokens: Any, first: float | None, last: float | None) -> float | None:
    # A stalled server flushes the tokens it queued as one burst (all deltas within microseconds):
    # no decode speed can be read from that, and (n - 1) / span would report millions of tok/s.
    if not isinstance(out_tokens, int) or out_tokens < 2 or first is None or last is None:
        return None
    if last - first < MIN_DECODE_SPAN_S:
        return None
    return (out_tokens - 1) / (last - first)


# -- backend counters ---------------------------------------------------------------------------


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


# -- progress and summary -----------------------------------------------------------------------


class Progress:
    """Progress on stderr: done/total, rate, ETA, errors, accuracy per arm so far. One rewritten
    line on a terminal; otherwise a line every 5 % so logs stay short."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done, self.errors = total, 0, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.correct: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._every = max(1, total // 20)

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        if row.get("error"):
            self.errors += 1
        elif row.get("correct") is not None:
            c = self.correct[row["arm"]]
            c[0] += int(bool(row["correct"]))
            c[1] += 1
        if self.tty or self.done % self._every == 0 or self.done == self.total:
            self.stream.write(("\r" if self.tty else "") + self.line() + ("" if self.tty else "\n"))
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        acc = "  ".join(f"{a} {c[0]}/{c[1]}" for a, c in sorted(self.correct.items()))
        bar = "#" * int(20 * self.done / max(self.total, 1))
        return (
            f"[{bar:20}] {self.done}/{self.total}  {rate * 60:.1f}/min  ETA {_duration(eta)}  "
            f"errors {self.errors}  correct: {acc or '-'} "
        )

    def close(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def summary_table(rows: list[dict[str, Any]], arms: tuple[str, ...] | None = None) -> str:
    """Per arm x task over the last good row of each pair: n, accuracy, mean output tokens,
    median TTFT, median decode tok/s, mean e2e; ``err``: pairs whose latest row is an error."""
    good = latest_good(rows)
    failed = {(r["prompt_id"], r["arm"]) for r in rows if r.get("error")} - set(good)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in good.values():
        groups[(r["arm"], r["task"])].append(r)
    errs: dict[tuple[str, str], int] = defaultdict(int)
    tasks = {r["prompt_id"]: r.get("task", "") for r in rows}
    for pid, arm in failed:
        errs[(arm, tasks[pid])] += 1
    keys = sorted(k for k in set(groups) | set(errs) if not arms or k[0] in arms)
    lines = [
        f"{'arm':24} {'task':10} {'n':>5} {'err':>4} {'acc':>6} {'out tok':>8} {'TTFT p50':>9} "
        f"{'tok/s p50':>9} {'e2e mean':>9}"
    ]
    for arm, task in keys:
        rs = groups.get((arm, task), [])
        labels = [bool(r["correct"]) for r in rs if r.get("correct") is not None]
        acc = f"{100 * sum(labels) / len(labels):.0f}%" if labels else "-"
        out = [r["output_tokens"] for r in rs if isinstance(r.get("output_tokens"), int)]
        ttft = [r["ttft_s"] for r in rs if r.get("ttft_s") is not None]
        tps = [r["decode_tps"] for r in rs if r.get("decode_tps")]
        e2e = [r["e2e_s"] for r in rs if r.get("e2e_s") is not None]
        lines.append(
            f"{arm:24} {task:10} {len(rs):>5} {errs.get((arm, task), 0):>4} {acc:>6} "
            f"{_fmt(statistics.fmean(out) if out else None, '.0f'):>8} "
            f"{_fmt(statistics.median(ttft) if ttft else None, '.3f', 's'):>9} "
            f"{_fmt(statistics.median(tps) if tps else None, '.1f'):>9} "
            f"{_fmt(statistics.fmean(e2e) if e2e else None, '.2f', 's'):>9}"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


# -- the run --------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def run_profile(
    opts: ProfileOptions,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    prompts: list[Prompt] | None = None,
    progress_stream: TextIO | None = None,
) -> RunResult:
    """Profile ``opts.arms`` on the sampled prompts; append rows to ``opts.out``; write the meta file.

    ``transport`` replaces the network and ``prompts`` the data packages (tests). A cancellation
    (Ctrl-C under :func:`asyncio.run`) stops the run: in-flight requests are dropped and the
    result says ``interrupted``. Raises ``ValueError``/``FileNotFoundError`` from
    :func:`router.datasets.load_prompts`.
    """
    if prompts is None:
        prompts = load_prompts(opts.tasks, opts.per_task, seed=opts.seed, split=opts.split)
    done = set(latest_good(read_rows(opts.out)))
    todo = [(p, a) for p in prompts for a in opts.arms if (p.id, a) not in done]
    total = len(prompts) * len(opts.arms)
    print(
        f"==> {len(prompts)} prompts x {len(opts.arms)} arms = {total} pairs: {total - len(todo)} already in "
        f"{opts.out}, {len(todo)} to run",
        flush=True,
    )
    run: dict[str, Any] = {
        "command": opts.command,
        "started_at": _now(),
        "gateway": opts.gateway,
        "arms": list(opts.arms),
        "tasks": list(opts.tasks),
        "per_task": opts.per_task,
        "seed": opts.seed,
        "split": opts.split,
        "max_tokens": opts.max_tokens,
        "concurrency": opts.concurrency,
        "data_packages": data_versions(),
        "python": platform.python_version(),
    }
    result = RunResult()
    progress = Progress(len(todo), progress_stream)
    sems = {a: asyncio.Semaphore(opts.concurrency) for a in opts.arms}
    limits = httpx.Limits(max_connections=opts.concurrency * len(opts.arms) + 8, max_keepalive_connections=None)
    timeout = httpx.Timeout(opts.timeout_s, connect=10.0)
    async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as client:
        before = await scrape(client, opts.backend_metrics) if opts.backend_metrics else {}
        with _open_for_append(opts.out) as fh:

            async def one(prompt: Prompt, arm: str) -> None:
                async with sems[arm]:
                    row, text = await measure(client, opts.gateway, prompt, arm, opts.max_tokens)
                if row["error"] is None:  # scored outside the slot: the arm's backend stays busy
                    row["correct"] = await asyncio.to_thread(score, prompt, text)
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                result.rows.append(row)
                result.written += 1
                result.errors += row["error"] is not None
                progress.update(row)

            tasks = [asyncio.create_task(one(p, a)) for p, a in todo]
            try:
                await asyncio.gather(*tasks)
            except asyncio.CancelledError:
                result.interrupted = True
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # we stop on purpose: the clean-up below must not be cancelled too
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        progress.close()
        if opts.backend_metrics:
            after = await scrape(client, opts.backend_metrics)
            run["spec_decode"] = {
                "urls": opts.backend_metrics,
                **acceptance(before, after, result.rows),
            }
    run.update(finished_at=_now(), interrupted=result.interrupted, rows_written=result.written, errors=result.errors)
    write_meta(meta_path(opts.out), run)
    return result


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def profile_command(args: argparse.Namespace) -> int:
    """Entry point of ``llm-gateway profile``: 0 done, 1 some rows failed, 2 bad input, 130 interrupted."""
    try:
        opts = ProfileOptions.from_args(args)
        if opts.concurrency < 1 or opts.max_tokens < 1 or not opts.arms or not opts.tasks:
            raise ValueError("--concurrency and --max-tokens must be >= 1; --arms and --tasks must not be empty")
    except ValueError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run_profile(opts))
    except (ValueError, FileNotFoundError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        result = RunResult(interrupted=True)
    print(summary_table(read_rows(opts.out), opts.arms))
    meta = meta_path(opts.out)
    if meta.exists():
        accepted = json.loads(meta.read_text(encoding="utf-8")).get("spec_decode_acceptance") or {}
        for arm, a in accepted.items():
            if a.get("acceptance_rate") is not None:
                print(
                    f"spec-decode acceptance {arm}: {100 * a['acceptance_rate']:.1f}% "
                    f"of {a['draft_tokens']:.0f} draft tokens"
                )
    if result.interrupted:
        print(
            f"\n==> interrupted: finished rows are in {opts.out}; run the same command to resume:\n    {opts.command}",
            file=sys.stderr,
        )
        return 130
    if result.errors:
        print(f"==> {result.errors} requests failed; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
