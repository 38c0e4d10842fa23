"""Parallel draft → distill → refine (PDR): an answer built from several upstream calls.

:class:`PDRRunner` runs the ``pdr`` strategy (:class:`router.strategy.PDRStrategy`) for one chat
request. It does no I/O of its own: the gateway hands it a callable bound to an arm's backends, so
the orchestration is tested with fakes and does not care how requests travel::

    complete(body: dict) -> dict               # one non-streaming chat completion; raises on failure

Each round::

    drafts   n parallel calls, temperature draft_temperature, seeds base+k, max_tokens draft_max_tokens
    distill  one call summarising the drafts into a workspace, max_tokens = workspace_tokens
    refine   the client's own body, its last user turn carrying the workspace

Round r > 1 drafts see round r-1's answer and are asked to improve it. Drafts and distill are
never streamed. For a stream, :meth:`PDRRunner.prepare_stream` runs everything up to the last
refine and returns that refine's body: the gateway streams it like any other call, through the
relay, which adds the earlier stages' ``usage`` to the stream's. ``usage`` sums every stage. A
failed draft is dropped while another succeeds; when all fail, the first error is raised.
Cancelling the caller (a client disconnect) cancels every in-flight upstream call.

Only ``/v1/chat/completions`` bodies are supported: the distill and refine prompts are chat
turns, and a completions prompt has no turn to attach the workspace to.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import InvalidRequest, UpstreamError
from gateway.sse import USAGE_KEYS, summed
from router.strategy import PDRStrategy

log = logging.getLogger("gateway.pdr")

CompleteFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
StageHook = Callable[[str, float], None]

STAGES = ("draft", "distill", "refine")
# Fields that make no sense for a draft or a distill call (the gateway decides them).
_STREAM_FIELDS = ("stream", "stream_options")

_DRAFT_RETRY_NOTE = (
    "A previous attempt at this request produced the answer below. Check it carefully, fix any "
    "mistakes and write an improved, complete answer.\n\n--- previous answer ---\n{answer}\n--- end ---"
)
_REFINE_NOTE = (
    "Notes from several independent attempts at this request (they may contain errors):\n\n"
    "--- notes ---\n{workspace}\n--- end of notes ---\n\n"
    "Using what is correct in the notes, write your best, complete answer to the request above. "
    "Do not mention the notes."
)
_DISTILL_PROMPT = (
    "Below is a conversation and {n} candidate answer(s) to its last request, written "
    "independently.{previous}\n\nWrite a compact workspace of at most about {budget} tokens that "
    "records: the key steps and intermediate results, the final answer each candidate reached, where "
    "they agree, where they disagree and which version looks right and why. Do not write a new full "
    "answer; be terse.\n\n=== conversation ===\n{conversation}\n\n{candidates}"
)


class PDRRunner:
    """Runs PDR for **one** request; build one per request (it keeps that request's usage).

    ``complete`` runs the distill and refine stages (bound to ``refine_arm`` or the arm itself);
    ``draft_complete`` runs the drafts (bound to ``draft_arm``; default
    ``complete``). The callables set the upstream ``model`` themselves; the runner passes the
    client's. ``on_stage(stage, seconds)`` is called after each stage finishes (``stage`` in
    :data:`STAGES`, once per round; a stage that fails or is cancelled is not reported); it
    must not raise. ``seed``: base seed of the drafts; default the body's ``seed``, else
    random. Not safe for concurrent use; safe to cancel at any point.
    """

    def __init__(
        self,
        strategy: PDRStrategy,
        complete: CompleteFn,
        *,
        draft_complete: CompleteFn | None = None,
        on_stage: StageHook | None = None,
        seed: int | None = None,
    ) -> None:
        self.strategy = strategy
        self._complete = complete
        self._draft_complete = draft_complete or complete
        self._on_stage = on_stage
        self._seed = seed
        self.usage: dict[str, int] = dict.fromkeys(USAGE_KEYS, 0)
        """Token usage summed over every stage that answered so far (final stage included)."""
        self.failed_drafts: list[BaseException] = []
        """Errors of the drafts that failed (the request went on with the others)."""
        self._answers: list[str] = []

    # ------------------------------------------------------------------ public entry points

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer ``body`` (a chat completion request) with one ``chat.completion`` object whose
        ``choices`` are the final refine's and whose ``usage`` sums every stage.

        Raises :class:`InvalidRequest` for a body without ``messages``, the first draft's error
        when every draft fails, or a distill/refine stage's error as raised by the callables.
        """
        response = await self._rounds(body, self.strategy.rounds)
        out = dict(response) if response is not None else {}
        out["usage"] = dict(self.usage)
        return out

    async def prepare_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run every stage before the last refine; return that refine's body, to be streamed by the
        caller (``stream`` on, ``stream_options.include_usage`` on). :attr:`usage` then holds the
        earlier stages' usage. Raises as :meth:`complete`.
        """
        await self._rounds(body, self.strategy.rounds - 1)
        final = await self._prepare_refine(body, self.strategy.rounds - 1)
        final["stream"] = True
        final["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return final

    # ------------------------------------------------------------------ stages

    async def _rounds(self, body: dict[str, Any], rounds: int) -> dict[str, Any] | None:
        """``rounds`` full non-streaming rounds, each answer fed to the next; the last response."""
        response = None
        for _ in range(rounds):
            refine = await self._prepare_refine(body, len(self._answers))
            refine.pop("stream_options", None)
            refine["stream"] = False
            started = time.perf_counter()
            response = await self._complete(refine)
            self._add_usage(response)
            self._stage("refine", started)
            self._answers.append(_text(response, "refine"))
        return response

    async def _prepare_refine(self, body: dict[str, Any], round_: int) -> dict[str, Any]:
        """Drafts and distill of round ``round_``; returns its refine body (the client's, annotated)."""
        messages = _messages(body)
        answer = self._answers[-1] if self._answers else None
        drafts = await self._drafts(body, messages, round_, answer)
        workspace = await self._distill(body, messages, drafts, answer)
        refine = {k: v for k, v in body.items() if k != "messages"}
        refine["messages"] = _with_note(messages, _REFINE_NOTE.format(workspace=workspace))
        return refine

    async def _drafts(self, body: dict[str, Any], messages: list[Any], round_: int, answer: str | None) -> list[str]:
        s = self.strategy
        base = self._base_seed(body)
        draft_messages = messages if answer is None else _with_note(messages, _DRAFT_RETRY_NOTE.format(answer=answer))
        template = {k: v for k, v in body.items() if k not in (*_STREAM_FIELDS, "messages", "max_completion_tokens")}
        template.update(stream=False, n=1, temperature=s.draft_temperature, max_tokens=s.draft_max_tokens)
        bodies = []
        for k in range(s.drafts):
            b = dict(template, messages=draft_messages)
            b["seed"] = base + round_ * s.drafts + k
            bodies.append(b)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:  # cancelling the caller cancels (and awaits) every draft
            tasks = [tg.create_task(self._one_draft(b)) for b in bodies]
        results = [t.result() for t in tasks]
        texts = [r for r in results if isinstance(r, str)]
        errors = [r for r in results if isinstance(r, BaseException)]
        self.failed_drafts.extend(errors)
        if not texts:
            raise errors[0]
        if errors:
            log.warning("pdr: %d of %d drafts failed; going on with %d", len(errors), len(bodies), len(texts))
        self._stage("draft", started)
        return texts

    async def _one_draft(self, body: dict[str, Any]) -> str | Exception:
        try:
            response = await self._draft_complete(body)
            self._add_usage(response)
            return _text(response, "draft")
        except Exception as exc:  # one failed draft must not fail the others
            return exc

    async def _distill(self, body: dict[str, Any], messages: list[Any], drafts: list[str], answer: str | None) -> str:
        budget = self.strategy.workspace_tokens
        candidates = "\n\n".join(f"=== candidate {i} ===\n{d}" for i, d in enumerate(drafts, 1))
        previous = ""
        if answer is not None:
            previous = " The previous round's answer is shown first."
            candidates = f"=== previous answer ===\n{answer}\n\n{candidates}"
        prompt = _DISTILL_PROMPT.format(
            n=len(drafts),
            previous=previous,
            budget=budget,
            conversation=_render(messages),
            candidates=candidates,
        )
        request = {
            "model": body.get("model"),
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": budget,
            "temperature": 0.0,
            "stream": False,
        }
        started = time.perf_counter()
        response = await self._complete(request)
        self._add_usage(response)
        workspace = _text(response, "distill")
        self._stage("distill", started)
        return workspace

    # ------------------------------------------------------------------ bookkeeping

    def _base_seed(self, body: dict[str, Any]) -> int:
        if self._seed is None:
            seed = body.get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool):
                self._seed = seed
            else:
                self._seed = random.randrange(1 << 30)
        return self._seed

    def _add_usage(self, response: Any) -> None:
        self.usage = summed(self.usage, response.get("usage") if isinstance(response, dict) else None)

    def _stage(self, stage: str, started: float) -> None:
        if self._on_stage is not None:
            self._on_stage(stage, time.perf_counter() - started)


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "the 'pdr' strategy answers chat completions only; the body needs 'messages'", param="messages"
        )
    return messages


def _text(response: Any, stage: str) -> str:
    """The first choice's text; a response without any is a protocol error."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else choices[0].get("text")
        if isinstance(content, str) and content.strip():
            return content.strip()
    raise UpstreamError(f"pdr {stage} stage: upstream answer has no text", kind="protocol")


def _render(messages: list[Any]) -> str:
    lines = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and content:
            lines.append(f"[{m.get('role', 'user')}]\n{content}")
    return "\n\n".join(lines)


def _with_note(messages: list[Any], note: str) -> list[Any]:
    """``messages`` with ``note`` appended to the last user turn (a new user turn if the last is not
    one): some chat templates reject a second system message or two user turns in a row."""
    out = list(messages)
    last = out[-1]
    if not (isinstance(last, dict) and last.get("role") == "user"):
        return [*out, {"role": "user", "content": note}]
    turn = copy.copy(last)
    content = turn.get("content")
    if isinstance(content, list):
        turn["content"] = [*content, {"type": "text", "text": "\n\n" + note}]
    else:
        turn["content"] = f"{content or ''}\n\n{note}"
    out[-1] = turn
    return out
