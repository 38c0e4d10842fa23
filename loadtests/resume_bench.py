"""Streams that survive a dying backend, measured on a real stack (issue 16 part 1).

Against a running gateway whose arm has two replicas (two vLLM servers), for each of ``--n``
streamed answers at temperature 0: stream the prompt, and after a random number of content chunks
SIGKILL the backend that serves it (the ``x-route-backend`` header names it), read the stream to its
end, then restart that backend and wait until the gateway sees it healthy again. Each answer is
compared with the uninterrupted answer to the same prompt (streamed once beforehand, nothing
killed). Reports, as JSON and Markdown:

* completed: the stream ended with ``[DONE]`` and no error event;
* identical: its text equals the uninterrupted answer (greedy decoding continues the same answer up
  to re-tokenization of the text delivered before the kill);
* resumed: the gateway said so (``: x-route-resumed backend=... at_tokens=...``);
* resume time p50/p99: from the kill to the first content chunk after the seam, as the client saw it.

How a backend is killed and restarted, per backend name (both flags may be repeated)::

    --pgid NAME=PGID         os.killpg(PGID, SIGKILL): the server's process group (start vLLM with setsid)
    --kill-cmd NAME=CMD      a shell command instead (e.g. "docker kill vllm-a")
    --restart-cmd NAME=CMD   a shell command that starts it again; if the last line it prints is an
                             integer, that is the new process group (e.g. "setsid vllm serve ... & echo $!")

Example (two SmolLM2 replicas started with ``loadtests/start_replica.sh PORT CPU``, which prints the
process group; docs/reliability.md has the gateway config)::

    python -m loadtests.resume_bench --gateway http://127.0.0.1:8099 --model smollm2-135m --n 100 \\
        --max-tokens 200 --pgid r1=PGID1 --pgid r2=PGID2 \\
        --restart-cmd 'r1=loadtests/start_replica.sh 8011 0' --restart-cmd 'r2=loadtests/start_replica.sh 8012 1' \\
        --out loadtests/results/resume-smollm2

Resumable: each answer is appended to ``OUT.jsonl`` as soon as it is measured (with its text, the seam
and where it parts from the uninterrupted answer) and the uninterrupted answers are kept in
``OUT.refs.json``; a rerun with the same ``--out`` and ``--seed`` skips the answers done (each answer's
kill point is drawn in order, so they are the same) and writes ``OUT.json`` / ``OUT.md`` over all of them.

This script starts no vLLM server itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.kit.phases import pct

PROMPTS = (
    "Write a short story about a lighthouse keeper and a storm.",
    "Explain how a hash table works, step by step.",
    "Describe the water cycle to a ten-year-old.",
    "List ten facts about the planet Mars, one per line.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
)


@dataclass
class Run:
    """One streamed answer whose backend was killed."""

    prompt: int
    backend: str
    kill_after: int  # content chunks read before the kill
    completed: bool = False
    identical: bool = False
    resumed: bool = False
    resume_s: float | None = None
    error: str | None = None
    chunks: int = 0
    index: int = -1  # which of the ``--n`` answers (the key a restarted run skips done answers by)
    diverge_at: int | None = None  # first character where the text departs from the uninterrupted one
    seam_at: int | None = None  # characters the client had from the killed backend (the seam, in text)
    text: str = ""


@dataclass
class Stream:
    """What the client saw of one stream."""

    backend: str = ""
    text: str = ""
    done: bool = False
    error: str | None = None
    comments: list[str] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)  # perf_counter of each content chunk
    lengths: list[int] = field(default_factory=list)  # characters of text after each content chunk


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a share ``k``/``n`` (95 % for the default ``z``); ``None`` for n = 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)


def summarize(runs: list[Run]) -> dict[str, Any]:
    """The report's figures over ``runs`` (shares in [0, 1] with 95 % Wilson intervals, times in ms)."""
    n = len(runs)
    times = [r.resume_s for r in runs if r.resume_s is not None]

    def count(flag: str) -> int:
        return sum(bool(getattr(r, flag)) for r in runs)

    def share(flag: str) -> float | None:
        return round(count(flag) / n, 4) if n else None

    def ms(q: float) -> float | None:
        return round(pct(times, q) * 1000, 1) if times else None

    # how far past the seam a completed answer that is not identical parts from the uninterrupted one
    # (0 or less: at or before the seam, which would be a seam fault rather than numerics)
    gaps = [
        r.diverge_at - r.seam_at for r in runs if r.completed and r.diverge_at is not None and r.seam_at is not None
    ]
    by_prompt: dict[int, list[int]] = {}
    for r in runs:
        by_prompt.setdefault(r.prompt, [0, 0])[0] += bool(r.identical)
        by_prompt[r.prompt][1] += 1
    return {
        "answers": n,
        "completed_share": share("completed"),
        "identical_share": share("identical"),
        "resumed_share": share("resumed"),
        "completed_ci95": wilson(count("completed"), n),
        "identical_ci95": wilson(count("identical"), n),
        "resume_ms_p50": ms(0.5),
        "resume_ms_p99": ms(0.99),
        "resume_ms_max": round(max(times) * 1000, 1) if times else None,
        "errors": sorted({r.error for r in runs if r.error}),
        "parted_chars_after_seam_min": min(gaps) if gaps else None,
        "parted_chars_after_seam_p50": pct([float(g) for g in gaps], 0.5) if gaps else None,
        "parted_at_or_before_seam": sum(g <= 0 for g in gaps),
        "identical_by_prompt": {str(k): f"{v[0]}/{v[1]}" for k, v in sorted(by_prompt.items())},
    }


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """A Markdown report of :func:`summarize`'s figures and the run's conditions."""

    def pc(x: float | None) -> str:
        return "n/a" if x is None else f"{x * 100:.1f} %"

    def t(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0f} ms"

    def ci(x: tuple[float, float] | None) -> str:
        return "" if x is None else f" ({x[0] * 100:.1f} to {x[1] * 100:.1f})"

    lines = [
        "# Streams that survive a dying backend",
        "",
        f"{summary['answers']} streamed answers (temperature 0, max_tokens {meta.get('max_tokens')}) against "
        f"{meta.get('gateway')}, model `{meta.get('model')}`; the serving backend SIGKILLed after a random "
        f"{meta.get('kill_range')} content chunks, restarted after each answer.",
        "",
        "| completed (95 % CI) | identical to the uninterrupted answer (95 % CI) | resumed | resume time p50 | p99 "
        "| max |",
        "|---|---|---|---|---|---|",
        f"| {pc(summary['completed_share'])}{ci(summary.get('completed_ci95'))} "
        f"| {pc(summary['identical_share'])}{ci(summary.get('identical_ci95'))} | {pc(summary['resumed_share'])} "
        f"| {t(summary['resume_ms_p50'])} | {t(summary['resume_ms_p99'])} | {t(summary['resume_ms_max'])} |",
        "",
        "Intervals: Wilson score, 95 %.",
    ]
    if summary.get("parted_chars_after_seam_min") is not None:
        lines += [
            "",
            f"Answers not identical part from the uninterrupted one {summary['parted_chars_after_seam_p50']:.0f} "
            f"characters after the seam at the median (at least {summary['parted_chars_after_seam_min']}; "
            f"{summary['parted_at_or_before_seam']} at or before it). Identical, by prompt: "
            + ", ".join(f"{k}: {v}" for k, v in summary["identical_by_prompt"].items())
            + ".",
        ]
    if summary["errors"]:
        lines += ["", "Errors seen: " + "; ".join(f"`{e}`" for e in summary["errors"])]
    return "\n".join(lines) + "\n"


def seam(stream: Stream) -> int | None:
    """Content chunks the client had from the first backend: ``at_tokens`` of the ``x-route-resumed`` comment."""
    for comment in stream.comments:
        fields = dict(part.split("=", 1) for part in comment.split()[2:] if "=" in part)
        if comment.startswith(": x-route-resumed") and fields.get("at_tokens", "").isdigit():
            return int(fields["at_tokens"])
    return None


def resume_time(stream: Stream, killed_at: float) -> float | None:
    """From the kill to the first content chunk after the seam (``at_tokens`` of the comment)."""
    at = seam(stream)
    if at is not None and at < len(stream.chunk_times):
        return max(stream.chunk_times[at] - killed_at, 0.0)
    return None


def read_stream(response: httpx.Response, on_chunk: Any = None) -> Stream:
    """Read an SSE chat stream; ``on_chunk(n)`` is called after the n-th content chunk."""
    out = Stream(backend=response.headers.get("x-route-backend", ""))
    for line in response.iter_lines():
        if line.startswith(":"):
            out.comments.append(line)
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            out.done = True
            continue
        doc = json.loads(data)
        if "error" in doc:
            out.error = str(doc["error"].get("code") or doc["error"].get("message"))
            continue
        for choice in doc.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                out.text += content
                out.chunk_times.append(time.perf_counter())
                out.lengths.append(len(out.text))
                if on_chunk is not None:
                    on_chunk(len(out.chunk_times))
    return out


class Backends:
    """Kills and restarts backends by name, as the command line says."""

    def __init__(self, pgids: dict[str, int], kill_cmds: dict[str, str], restart_cmds: dict[str, str]) -> None:
        self.pgids, self.kill_cmds, self.restart_cmds = pgids, kill_cmds, restart_cmds

    def kill(self, name: str) -> None:
        if name in self.kill_cmds:
            subprocess.run(self.kill_cmds[name], shell=True, check=False)
        elif name in self.pgids:
            os.killpg(self.pgids[name], signal.SIGKILL)
        else:
            raise SystemExit(f"no --pgid or --kill-cmd for backend '{name}'")

    def restart(self, name: str) -> None:
        cmd = self.restart_cmds.get(name)
        if cmd is None:
            raise SystemExit(f"no --restart-cmd for backend '{name}'")
        printed = subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout.split()
        if printed and printed[-1].isdigit():
            self.pgids[name] = int(printed[-1])


def healthy(client: httpx.Client, gateway: str, name: str) -> bool | None:
    """Whether the gateway's ``/ready`` lists backend ``name`` as healthy (``None``: no answer)."""
    try:
        return bool(client.get(gateway + "/ready").json().get("backends", {}).get(name, {}).get("healthy"))
    except (httpx.HTTPError, ValueError):
        return None


def wait_back(client: httpx.Client, gateway: str, name: str, timeout_s: float, down_within_s: float = 20) -> None:
    """Wait until the gateway has seen the killed backend go down (if it does within ``down_within_s``:
    a kill between two health checks leaves it listed healthy for a moment) and then come back."""
    deadline = time.monotonic() + down_within_s
    while time.monotonic() < deadline and healthy(client, gateway, name) is not False:
        time.sleep(0.25)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(client, gateway, name):
            return
        time.sleep(0.5)
    raise SystemExit(f"backend '{name}' did not come back within {timeout_s:.0f} s")


def one(
    client: httpx.Client, args: argparse.Namespace, body: dict[str, Any], kill_after: int, kill: Any
) -> tuple[Stream, float | None]:
    """Stream ``body``, killing its backend after ``kill_after`` content chunks; the stream and the kill time."""
    killed: list[float] = []
    backend: list[str] = []

    def on_chunk(n: int) -> None:
        if n == kill_after and not killed:
            kill(backend[0])
            killed.append(time.perf_counter())

    with client.stream("POST", args.gateway + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        backend.append(r.headers["x-route-backend"])
        stream = read_stream(r, on_chunk)
    return stream, killed[0] if killed else None


def diverge_at(text: str, reference: str) -> int | None:
    """The first character index where ``text`` departs from ``reference`` (``None``: identical)."""
    if text == reference:
        return None
    return next(
        (i for i, (a, b) in enumerate(zip(text, reference, strict=False)) if a != b), min(len(text), len(reference))
    )


def load_runs(path: Path) -> dict[int, Run]:
    """Answers already measured, by index: one JSON object per line of ``path`` (a torn last line, left by
    a run killed while writing, is skipped: that answer is measured again)."""
    done: dict[int, Run] = {}
    if not path.exists():
        return done
    names = set(Run.__dataclass_fields__)
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        run = Run(**{k: v for k, v in doc.items() if k in names})
        done[run.index] = run
    return done


def references(client: httpx.Client, gateway: str, bodies: list[dict[str, Any]], path: Path) -> list[str]:
    """The uninterrupted answer to each body, streamed once and kept in ``path`` (JSON) for a restarted run."""
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("bodies") == bodies:
            return list(cached["texts"])
    texts = []
    for body in bodies:
        with client.stream("POST", gateway + "/v1/chat/completions", json=body) as r:
            texts.append(read_stream(r).text)
    path.write_text(json.dumps({"bodies": bodies, "texts": texts}, indent=1) + "\n")
    return texts


def measure(
    client: httpx.Client,
    args: argparse.Namespace,
    backends: Backends,
    body: dict[str, Any],
    reference: str,
    i: int,
    kill_after: int,
) -> Run:
    """One answer: stream it, kill its backend after ``kill_after`` chunks, compare, restart the backend."""
    stream, killed_at = one(client, args, body, kill_after, backends.kill)
    run = Run(i % len(PROMPTS), stream.backend, kill_after, chunks=len(stream.chunk_times), error=stream.error, index=i)
    run.completed = stream.done and stream.error is None
    run.identical = run.completed and stream.text == reference
    run.diverge_at = diverge_at(stream.text, reference)
    run.text = stream.text
    at = seam(stream)
    run.seam_at = stream.lengths[at - 1] if at is not None and 0 < at <= len(stream.lengths) else None
    run.resumed = any(c.startswith(": x-route-resumed") for c in stream.comments)
    run.resume_s = resume_time(stream, killed_at) if run.resumed and killed_at is not None else None
    backends.restart(stream.backend)
    wait_back(client, args.gateway, stream.backend, args.ready_timeout_s)
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway", required=True, help="the gateway's base URL")
    p.add_argument("--model", required=True, help="a public model with two replicas in one arm")
    p.add_argument("--n", type=int, default=100, help="streamed answers, each with one kill")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--kill-range", default="3,120", help="content chunks before the kill: MIN,MAX")
    p.add_argument("--pgid", action="append", default=[], help="NAME=PGID")
    p.add_argument("--kill-cmd", action="append", default=[], help="NAME=CMD")
    p.add_argument("--restart-cmd", action="append", default=[], help="NAME=CMD")
    p.add_argument("--ready-timeout-s", type=float, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default="loadtests/results/resume-bench",
        help="writes OUT.json and OUT.md; each answer is appended to OUT.jsonl as it is measured and the "
        "uninterrupted answers kept in OUT.refs.json, so a rerun with the same OUT skips answers already done",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = lambda xs: dict(x.split("=", 1) for x in xs)  # noqa: E731
    backends = Backends({k: int(v) for k, v in pairs(args.pgid).items()}, pairs(args.kill_cmd), pairs(args.restart_cmd))
    lo, hi = (int(x) for x in args.kill_range.split(","))
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    done = load_runs(log)
    with httpx.Client(timeout=httpx.Timeout(30.0, read=300.0)) as client:
        bodies = [
            {"model": args.model, "stream": True, "temperature": 0, "max_tokens": args.max_tokens,
             "messages": [{"role": "user", "content": text}]}
            for text in PROMPTS
        ]  # fmt: skip
        reference = references(client, args.gateway, bodies, out.with_suffix(".refs.json"))
        for i in range(args.n):
            k = i % len(bodies)
            kill_after = rng.randint(lo, max(lo, min(hi, len(reference[k]) // 4)))  # drawn for done ones too
            if i in done:
                continue
            done[i] = measure(client, args, backends, bodies[k], reference[k], i, kill_after)
            line = json.dumps(asdict(done[i]))
            with log.open("a") as fh:
                fh.write(line + "\n")
            print(line, file=sys.stderr, flush=True)
    runs = [done[i] for i in range(args.n) if i in done]
    summary = summarize(runs)
    meta = {"gateway": args.gateway, "model": args.model, "max_tokens": args.max_tokens, "kill_range": args.kill_range}
    doc = {
        "summary": summary,
        "meta": meta,
        "runs": [{k: v for k, v in asdict(r).items() if k != "text"} for r in runs],
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
