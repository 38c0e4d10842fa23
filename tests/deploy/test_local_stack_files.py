"""The local stacks' backend files agree with their gateway configs, and strategies match server flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.arms import ArmCatalog
from gateway.settings import load_settings
from lab.launcher import BackendSpec

LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "local"
STACKS = [
    ("backends.yaml", "gateway.yaml"),
    ("backends-strategies.yaml", "gateway-strategies.yaml"),
    ("backends-healed.yaml", "gateway-healed.yaml"),
    ("backends-full.yaml", "gateway-full.yaml"),
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
    policy = settings.routing.build([live.arm for live in ArmCatalog(settings).arms.values()])
    assert policy.name == settings.routing.policy
