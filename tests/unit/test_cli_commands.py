"""``llm-gateway``'s command registry: the gateway's own commands never look up the lab's, the lab's come
from entry points, and a command whose package is missing names the extra to install."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from gateway import cli

LAB_COMMANDS = {"profile", "train", "evaluate", "local-stack", "make-variant", "heal-variant"}
CONFIG = str(Path(__file__).resolve().parents[2] / "deploy" / "local" / "gateway.yaml")


def test_every_lab_command_is_registered_by_an_entry_point() -> None:
    eps = {ep.name: ep for ep in cli.plugin_commands()}
    assert set(eps) == LAB_COMMANDS
    for ep in eps.values():
        command = ep.load()
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        assert command.help and callable(command.run)


def test_the_gateway_commands_never_look_plugins_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(**_: object) -> list[EntryPoint]:
        raise AssertionError("entry points looked up for a gateway command")

    monkeypatch.setattr(cli, "entry_points", fail)
    assert cli.main(["check-config", "--config", CONFIG]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_command_of_a_missing_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = EntryPoint(name="train", value="nolab.commands:train", group=cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda **_: [missing])
    assert cli.main(["train", "--profiles", "p.jsonl", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "llm-gateway train: needs the 'nolab' extra" in err and "pip install 'llm-gateway[nolab]'" in err


def test_serving_imports_neither_lab_nor_variants() -> None:
    code = (
        "import sys, gateway.cli, gateway.app, gateway.server\n"
        "gateway.cli.build_parser(plugins=False)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lab', 'variants'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
