"""The launcher's signal handling and records, in-process (with processes: integration/test_local_stack_signals)."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import launcher, processes
from lab.processes import Stopped, raise_on_stop_signals


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    """Each test starts from the default SIGTERM/SIGHUP actions, whatever the runner inherited (under
    ``nohup`` SIGHUP is ignored, and an ignored SIGHUP rightly stays ignored)."""
    saved = {sig: signal.getsignal(sig) for sig in processes.STOP_SIGNALS}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_raise_stopped_inside_the_block(signum: signal.Signals) -> None:
    before = {sig: signal.getsignal(sig) for sig in processes.STOP_SIGNALS}
    with pytest.raises(Stopped) as info, raise_on_stop_signals():
        signal.raise_signal(signum)
    assert (info.value.signum, str(info.value)) == (signum, signum.name)
    assert {sig: signal.getsignal(sig) for sig in processes.STOP_SIGNALS} == before


def test_sighup_passes_through_a_sigterm_handler_set_inside_the_block() -> None:
    """As uvicorn's: SIGHUP reaches it as SIGTERM, so the gateway drains; its raising SIGTERM again stops."""
    seen: list[int] = []
    with pytest.raises(Stopped) as info, raise_on_stop_signals():
        ours = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
        signal.raise_signal(signal.SIGHUP)
        assert seen == [signal.SIGTERM]
        signal.signal(signal.SIGTERM, ours)
        signal.raise_signal(signal.SIGTERM)
    assert info.value.signum == signal.SIGHUP


def test_an_ignored_sighup_stays_ignored() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with raise_on_stop_signals():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.raise_signal(signal.SIGHUP)


def test_held_signals_act_once_the_block_ends() -> None:
    with pytest.raises(Stopped), raise_on_stop_signals():
        with processes.held_signals() as caught:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert caught == [signal.SIGTERM, signal.SIGTERM]
        pytest.fail("the held SIGTERM was not raised again")


def test_held_sigint_becomes_keyboard_interrupt_after_the_block() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt), processes.held_signals():
        signal.raise_signal(signal.SIGINT)


def test_proc_stat_is_read_past_a_command_name_with_spaces_and_parentheses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "42").mkdir()
    fields_7_to_21 = " ".join(["0"] * 15)  # state, ppid, pgrp, session, ..., starttime is field 22
    (tmp_path / "42" / "stat").write_text(f"42 (VLLM::Engine (core) x) S 1 40 40 {fields_7_to_21} 777 0 0\n")
    monkeypatch.setattr(processes, "PROC", tmp_path)
    assert processes.read_proc(42) == processes.Proc(42, "S", 40, 40, 777)
    assert processes.read_proc(43) is None


@pytest.mark.parametrize(
    ("lines", "ended"),
    [
        ("12\n13\n", [12, 13]),  # the launcher died: the pipe closed with groups still listed
        ("12\n13\nclear\n", []),  # the launcher stopped them itself
        ("12\nclear\n14\n", [14]),  # started again after a stop
        ("", []),
    ],
)
def test_the_watchdog_ends_the_groups_listed_when_its_input_closes(
    lines: str, ended: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[int]] = []
    monkeypatch.setattr(processes, "live_groups", lambda pgids: list(pgids))
    monkeypatch.setattr(processes, "end_groups", lambda pgids, grace_s: calls.append(list(pgids)))
    processes.watch(io.StringIO(lines))
    assert calls == ([ended] if ended else [])


@pytest.mark.parametrize(
    ("text", "pgids"),
    [
        ('{"launcher": 7, "servers": [{"name": "a", "pgid": 12, "started": 5}, {"name": "b", "pgid": 13}]}', [12, 13]),
        ('{"launcher": 7, "servers": [{"name": "a", "pgid": 1}, {"name": "b", "pgid": "12"}]}', []),
        ('{"launcher": 7, "serv', []),
        ("{}", []),
        ("[]", []),
        ('{"servers": 5}', []),
    ],
)
def test_records_are_read_defensively(text: str, pgids: list[int]) -> None:
    assert [s["pgid"] for s in launcher._parse_record(text)] == pgids
