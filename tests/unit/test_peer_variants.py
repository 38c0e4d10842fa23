"""The peer harness's variants of our gateway (``ours[-auto][:granian][:lean][:wN]``) and the server settings they
write into the generated gateway config."""

from __future__ import annotations

import pytest

from loadtests.kit.gateway import gateway_config
from loadtests.peer.peers import ours_variant


@pytest.mark.parametrize(
    "name",
    ["ours:granian", "ours:w2", "ours-auto:granian:w8", "ours-auto:uvicorn:w1", "ours:lean", "ours-auto:lean:w2"],
)
def test_variants_are_recognised(name: str) -> None:
    assert ours_variant(name) is not None


@pytest.mark.parametrize(
    "name", ["ours", "ours-auto", "tcp:w2", "ours:w0", "ours:wx", "ours:nginx", "ours:httpx", "litellm"]
)
def test_other_names_are_not_variants(name: str) -> None:
    assert ours_variant(name) is None


def test_server_settings_reach_the_config() -> None:
    cfg = gateway_config(9, "http://127.0.0.1:1", "m", "s", server={"http_server": "granian", "workers": 4})
    assert cfg["server"] == {
        "host": "127.0.0.1",
        "port": 9,
        "log_level": "info",
        "http_server": "granian",
        "workers": 4,
    }
