"""``llm-gateway profile``: measure every arm on offline prompt sets, through the gateway.

Each (prompt, arm) pair is one streaming chat request with ``model: "auto"`` pinned to the arm
(``route.arm``), temperature 0 and ``stream_options.include_usage``, timed on the client side
as a user would see it (:mod:`lab.measure`), scored for correctness (:mod:`lab.scoring`) and
appended to the output as one row (:mod:`lab.profiles` holds the row schema), flushed at once.

Resumable: pairs that already have a row without an error are skipped; error rows are retried
(the new row is appended, readers take the last good row). Ctrl-C stops cleanly: in-flight
requests are dropped, everything finished is on disk. A sidecar ``<out>.meta.json`` records
every run: command line, seed, times, data-package versions and, with ``--backend-metrics``,
the speculative-decoding acceptance rate per arm from the backends' vLLM counters
(:mod:`lab.spec_decode`).

Per-row acceptance: with ``--backend-metrics`` and ``--concurrency 1`` the run sends one request at a
time, arms included, and scrapes the backends just before and just after each; the row then
carries ``spec_draft_tokens`` and ``spec_accepted_tokens``, the deltas of the counters of the
backend that answered it (absent for a backend without speculative counters, and for a failed
request, whose generation may not have finished when it was cut off). vLLM's counters are
per server, not per request, so this is exact only when no other request runs on that backend
meanwhile: at higher concurrency (or with the arms overlapping) several requests share every delta,
and the fields are left out rather than guessed; the run's per-arm totals in the meta file remain.
Traffic from outside the run still mixes in: profile on a quiet stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shlex
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from lab import profiles
from lab.datasets import Prompt, data_versions, load_prompts
from lab.measure import measure
from lab.progress import progress
from lab.scoring import score
from lab.spec_decode import acceptance, row_counters, scrape


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


# -- progress and summary -----------------------------------------------------------------------


class Progress:
    """A progress bar on stderr (:func:`lab.progress.progress`): done/total, rate, ETA, and the
    errors and accuracy per arm so far. Redrawn in place on a terminal, a line every 30 s in a log."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.errors = 0
        self.correct: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.bar = progress(total, "profiling", "request", stream=stream)

    def update(self, row: dict[str, Any]) -> None:
        if row.get("error"):
            self.errors += 1
        elif row.get("correct") is not None:
            c = self.correct[row["arm"]]
            c[0] += int(bool(row["correct"]))
            c[1] += 1
        acc = " ".join(f"{a} {c[0]}/{c[1]}" for a, c in sorted(self.correct.items()))
        self.bar.set_postfix_str(f"errors {self.errors}, correct: {acc or '-'}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def summary_table(rows: list[dict[str, Any]], arms: tuple[str, ...] | None = None) -> str:
    """Per arm x task over the last good row of each pair: n, accuracy, mean output tokens,
    median TTFT, median decode tok/s, mean e2e; ``err``: pairs whose latest row is an error."""
    good = profiles.latest_good(rows)
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


def _run_record(opts: ProfileOptions) -> dict[str, Any]:
    """The meta file's entry for this run (completed by :func:`run_profile`)."""
    return {
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


def per_row_acceptance(opts: ProfileOptions) -> bool:
    """Whether rows get their own spec-decode counters: backend metrics given and one request at a time."""
    return opts.concurrency == 1 and bool(opts.backend_metrics)


async def _measure_all(
    client: httpx.AsyncClient,
    opts: ProfileOptions,
    todo: list[tuple[Prompt, str]],
    result: RunResult,
    fh: TextIO,
    tracker: Progress,
) -> None:
    """Measure, score and append every pair, ``opts.concurrency`` at a time per arm (one at a time in
    all, each between two counter scrapes, when :func:`per_row_acceptance`); a cancellation drops the
    requests in flight and marks ``result`` interrupted."""
    per_row = per_row_acceptance(opts)
    one_slot = asyncio.Semaphore(1)
    sems = {a: one_slot if per_row else asyncio.Semaphore(opts.concurrency) for a in opts.arms}

    async def one(prompt: Prompt, arm: str) -> None:
        async with sems[arm]:
            before = await scrape(client, opts.backend_metrics) if per_row else {}
            row, text = await measure(client, opts.gateway, prompt, arm, opts.max_tokens)
            backend = row.get("backend")
            if per_row and row["error"] is None and backend in opts.backend_metrics:
                after = await scrape(client, {backend: opts.backend_metrics[backend]})
                row.update(row_counters(before, after, backend))
        if row["error"] is None:  # scored outside the slot: the arm's backend stays busy
            row["correct"] = await asyncio.to_thread(score, prompt, text)
        profiles.append(fh, row)
        result.rows.append(row)
        result.written += 1
        result.errors += row["error"] is not None
        tracker.update(row)

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
    :func:`lab.datasets.load_prompts`.
    """
    if prompts is None:
        prompts = load_prompts(opts.tasks, opts.per_task, seed=opts.seed, split=opts.split)
    done = set(profiles.latest_good(profiles.read_rows(opts.out)))
    todo = [(p, a) for p in prompts for a in opts.arms if (p.id, a) not in done]
    total = len(prompts) * len(opts.arms)
    print(
        f"==> {len(prompts)} prompts x {len(opts.arms)} arms = {total} pairs: {total - len(todo)} already in "
        f"{opts.out}, {len(todo)} to run",
        flush=True,
    )
    run = _run_record(opts)
    result = RunResult()
    tracker = Progress(len(todo), progress_stream)
    limits = httpx.Limits(max_connections=opts.concurrency * len(opts.arms) + 8, max_keepalive_connections=None)
    timeout = httpx.Timeout(opts.timeout_s, connect=10.0)
    async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as client:
        before = await scrape(client, opts.backend_metrics) if opts.backend_metrics else {}
        with profiles.open_for_append(opts.out) as fh:
            await _measure_all(client, opts, todo, result, fh, tracker)
        tracker.close()
        if opts.backend_metrics:
            after = await scrape(client, opts.backend_metrics)
            spec = acceptance(before, after, result.rows)
            run["spec_decode"] = {"urls": opts.backend_metrics, "per_row": per_row_acceptance(opts), **spec}
    run.update(finished_at=_now(), interrupted=result.interrupted, rows_written=result.written, errors=result.errors)
    profiles.write_meta(profiles.meta_path(opts.out), run)
    return result


def _print_acceptance(out: Path) -> None:
    meta = profiles.meta_path(out)
    if not meta.exists():
        return
    accepted = json.loads(meta.read_text(encoding="utf-8")).get("spec_decode_acceptance") or {}
    for arm, a in accepted.items():
        if a.get("acceptance_rate") is not None:
            print(
                f"spec-decode acceptance {arm}: {100 * a['acceptance_rate']:.1f}% "
                f"of {a['draft_tokens']:.0f} draft tokens"
            )


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
    print(summary_table(profiles.read_rows(opts.out), opts.arms))
    _print_acceptance(opts.out)
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
