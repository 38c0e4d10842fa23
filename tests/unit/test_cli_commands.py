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


BAD_ARTIFACT = """
backends: [{name: b, url: "http://127.0.0.1:9", served_model: m}]
arms: [{name: a, model: m, backends: [b]}]
routing: {policy: learned, params: {artifact: /nonexistent}}
"""


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_policy_that_cannot_be_built_is_one_line_and_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config builds the routing policy as serve does; neither prints a traceback."""
    config = tmp_path / "gateway.yaml"
    config.write_text(BAD_ARTIFACT)
    assert cli.main([command, "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-gateway: routing.policy 'learned': /nonexistent")


def test_check_config_reports_the_policy_it_built(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", CONFIG]) == 0
    assert "routing policy 'learned' built" in capsys.readouterr().out


def test_config_defaults_to_gateway_config(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert cli.main(["check-config"]) == 2
    assert "give --config FILE or set GATEWAY_CONFIG" in capsys.readouterr().err
    monkeypatch.setenv("GATEWAY_CONFIG", CONFIG)
    assert cli.main(["check-config"]) == 0


def test_version_and_defaults_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("llm-gateway ")
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "(default: False)" in capsys.readouterr().out


def test_hash_key_prompts_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: "secret")
    assert cli.main(["hash-key"]) == 0
    assert len(capsys.readouterr().out.strip()) == 64


def test_every_option_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {' '.join(action.option_strings) or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not missing, missing
