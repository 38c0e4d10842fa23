"""The decoding strategy chosen per prompt for one model, by a learned artifact trained in the test.

Two arms serve the public model ``smol``: plain on fake backend b1, n-gram speculation on b2. The
artifact is trained on synthetic profiles where speculation pays in proportion to how much of the
answer the prompt lets it copy (``tests/unit/speed_synthetic.py``) and saved with
:mod:`router.artifact`; the gateway loads it like any other. Under ``prefer: speed`` a copy-heavy
prompt must go to the n-gram arm and a free-text prompt to the plain one, and ``/v1/route`` must
show the n-gram arm's predicted speed-up larger for the copy prompt.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fake_vllm import MakeGateway, Upstreams

from router.artifact import save_artifact
from router.training import train


def _load(name: str, path: Path) -> ModuleType:
    """A helper module by path (the test directories are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


syn = _load("_speed_synthetic", Path(__file__).resolve().parents[1] / "unit" / "speed_synthetic.py")

ARMS = [
    {"name": syn.PLAIN, "model": "smol", "backends": ["b1"], "strategy": {"kind": "plain"}},
    {
        "name": syn.NGRAM,
        "model": "smol",
        "backends": ["b2"],
        "strategy": {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4},
    },
]
COPY = (
    "Refactor this code block to use clearer names and return the whole code:\n```python\n"
    + "\n".join(syn.CODE[:24])
    + "\n```"
)
FREE = "Write a short story about a lighthouse keeper."


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = syn.profiles(240, seed=1)
    model, report = train(data.rows, data.vectors, data.kchars, syn.ENCODER.name, syn.NAMES, seed=0)
    path = tmp_path_factory.mktemp("artifact") / "strategies"
    save_artifact(model, path, {"validation": report})
    return path


def settings(artifact: Path) -> dict[str, Any]:
    # live_ttl_s: live measurements expire at once, so whatever the fakes' instant answers leave behind
    # cannot correct the forecasts between requests: the artifact alone decides (what is under test)
    return {"arms": ARMS, "routing": {"policy": "learned", "params": {"artifact": str(artifact)}, "live_ttl_s": 1e-6}}


def body(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": "smol", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **fields}


async def test_copy_and_free_text_prompts_get_different_strategies(
    make_gateway: MakeGateway, upstreams: Upstreams, artifact: Path
) -> None:
    async with make_gateway(**settings(artifact)) as gw:
        route = {}
        for name, content in (("copy", COPY), ("free", FREE)):
            r = await gw.client.post("/v1/route", json=body(content, route={"prefer": "speed"}))
            assert r.status_code == 200, r.text
            route[name] = r.json()
        assert (route["copy"]["arm"], route["copy"]["strategy"]) == (syn.NGRAM, "speculative-ngram-k4")
        assert (route["free"]["arm"], route["free"]["strategy"]) == (syn.PLAIN, "plain")
        assert route["copy"]["reason"] == route["free"]["reason"] == "prefer-speed"
        copy_up = route["copy"]["predictions"][syn.NGRAM]["speedup"]
        free_up = route["free"]["predictions"][syn.NGRAM]["speedup"]
        assert copy_up > 1.5 and free_up < 1.0  # planted: 0.85 x (1 + 2 x copyability)
        assert "speedup" not in route["copy"]["predictions"][syn.PLAIN]  # the plain arm is the reference
        assert not any(fake.generation_bodies for fake in upstreams.values())  # a dry run generates nothing

        for content, strategy, backend in ((FREE, "plain", "b1"), (COPY, "speculative-ngram-k4", "b2")):
            r = await gw.client.post("/v1/chat/completions", json=body(content), headers={"x-route-prefer": "speed"})
            assert r.status_code == 200, r.text
            assert (r.headers["x-route-strategy"], r.headers["x-route-backend"]) == (strategy, backend)
            assert r.headers["x-route-model"] == "smol" and r.headers["x-route-reason"] == "prefer-speed"
            sent = upstreams[backend].generation_bodies[-1]
            assert sent["messages"][0]["content"] == content


async def test_without_a_speed_preference_the_strategy_still_follows_the_prompt(
    make_gateway: MakeGateway, artifact: Path
) -> None:
    """Both arms share one quality (speculation is lossless), so ``balanced`` also comes down to speed."""
    async with make_gateway(**settings(artifact)) as gw:
        arms = []
        for content in (COPY, FREE):
            r = await gw.client.post("/v1/route", json=body(content))
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["predictions"][syn.NGRAM]["quality"] == doc["predictions"][syn.PLAIN]["quality"]
            arms.append(doc["arm"])
        assert arms == [syn.NGRAM, syn.PLAIN]
