"""The layer-pruning variant builder on tiny randomly initialised Llama / Qwen2 models made here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from variants import builder as vb

ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    *("the", "a", "is", "of", "to", "and", "what", "which", "capital", "france"),
    *("paris", "answer", "letter", "number", "even", "one", "word", "option", "only"),
]
CHAT_TEMPLATE = "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}<s> assistant"
PROMPTS = [{"id": f"p{i}", "messages": [{"role": "user", "content": " ".join(WORDS[i : i + 6])}]} for i in range(6)]


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", "user", "assistant", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(path: Path, *, family: str = "llama", layers: int = 8, tie: bool = True) -> Path:
    torch.manual_seed(0)
    common: dict[str, Any] = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    if family == "qwen2":
        config = Qwen2Config(**common, use_sliding_window=True, sliding_window=16, max_window_layers=layers // 2)
        model: Any = Qwen2ForCausalLM(config)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.to(torch.bfloat16).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def build(src: Path, out: Path, **kw: Any) -> dict[str, Any]:
    kw.setdefault("smoke", False)
    return vb.build(src, out, PROMPTS, seed=0, calibration_source="test", log=lambda *_: None, **kw)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny")


def test_drop_removes_and_renumbers_layers(tiny: Path, tmp_path: Path) -> None:
    meta = build(tiny, tmp_path / "out", drop=3)

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    dropped = [d["layer"] for d in meta["dropped"]]
    assert len(dropped) == 3 and not set(dropped) & {0, 1, 7}
    kept = meta["kept_source_layers"]
    assert kept == [i for i in range(8) if i not in dropped]
    src, out = tensors(tiny), tensors(tmp_path / "out")
    layer_ids = {int(k.split(".")[2]) for k in out if k.startswith("model.layers.")}
    assert layer_ids == set(range(5))
    for new, old in enumerate(kept):  # weights moved to their new index, unchanged (bf16 round trip)
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{new}.{name}"], src[f"model.layers.{old}.{name}"])
    assert out["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_dropped_layers_are_the_least_influential(tiny: Path, tmp_path: Path) -> None:
    meta = build(tiny, tmp_path / "out", drop=2)
    scores = meta["block_influence"]
    candidates = sorted(range(2, 7), key=lambda i: (scores[i], i))
    assert [d["layer"] for d in meta["dropped"]] == sorted(candidates[:2])
    assert [d["block_influence"] for d in meta["dropped"]] == [scores[i] for i in sorted(candidates[:2])]


@pytest.mark.parametrize("tie", [True, False])
def test_tie_word_embeddings_is_kept(tmp_path: Path, tie: bool) -> None:
    src = make_model(tmp_path / "src", tie=tie)
    build(src, tmp_path / "out", drop=2)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is tie
    assert ("lm_head.weight" in tensors(tmp_path / "out")) is (not tie)


def test_metadata_and_side_files_are_written(tiny: Path, tmp_path: Path) -> None:
    meta = build(tiny, tmp_path / "out", drop=2, smoke=True, allow_failing_smoke=True)
    out = tmp_path / "out"
    assert json.loads((out / vb.METADATA_FILE).read_text()) == meta
    assert meta["source_model"] == str(tiny.resolve())
    assert meta["source_layers"] == 8 and meta["num_hidden_layers"] == 6 and meta["seed"] == 0
    assert meta["calibration"]["samples"] == len(PROMPTS)
    assert meta["calibration"]["sha256"] == vb.calibration_hash(PROMPTS)
    assert meta["calibration"]["ids"] == [p["id"] for p in PROMPTS]
    assert meta["protected"] == [0, 1, 7]
    assert len(meta["block_influence"]) == 8
    for label in ("source", "variant"):  # a random model fails, allowed here, and the result is recorded
        assert [t["name"] for t in meta["smoke_test"][label]["tests"]] == ["fact", "format"]
        assert isinstance(meta["smoke_test"][label]["passed"], bool)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).exists(), name
    assert not (tmp_path / "out.tmp").exists()


def test_the_variant_loads_and_generates(tiny: Path, tmp_path: Path) -> None:
    build(tiny, tmp_path / "out", drop=3)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert len(model.model.layers) == 5
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(5))
    ids = torch.tensor([[1, 6, 7, 8]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape[1] == 8


def test_build_is_deterministic(tiny: Path, tmp_path: Path) -> None:
    build(tiny, tmp_path / "a", drop=3)
    build(tiny, tmp_path / "b", drop=3)
    for name in ("model.safetensors", "config.json", vb.METADATA_FILE):
        a, b = (hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in "ab")
        assert a == b, name


def test_keep_ratio(tiny: Path, tmp_path: Path) -> None:
    meta = build(tiny, tmp_path / "out", keep_ratio=0.75)
    assert meta["num_hidden_layers"] == 6 and len(meta["dropped"]) == 2


def test_qwen2_layer_types_and_max_window_layers_follow(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", family="qwen2", layers=8)
    meta = build(src, tmp_path / "out", drop=3)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    kept = meta["kept_source_layers"]
    source = json.loads((src / "config.json").read_text())
    assert config["num_hidden_layers"] == 5
    assert config["layer_types"] == [source["layer_types"][i] for i in kept]
    assert config["max_window_layers"] == sum(1 for i in kept if i < source["max_window_layers"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # config validation passes


@pytest.mark.parametrize(
    ("drop", "ratio", "message"),
    [
        (6, None, "can drop 1..5 of 8 layers"),
        (0, None, "can drop 1..5 of 8 layers"),
        (None, 1.5, "--keep-ratio must be in (0, 1)"),
        (None, None, "exactly one of --drop and --keep-ratio"),
        (2, 0.5, "exactly one of --drop and --keep-ratio"),
    ],
)
def test_bad_counts_are_refused(drop: int | None, ratio: float | None, message: str) -> None:
    with pytest.raises(vb.VariantError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        vb.drop_count(8, drop, ratio)


def test_an_existing_output_is_not_overwritten_without_force(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(vb.VariantError, match="exists and is not empty"):
        build(tiny, tmp_path / "out", drop=2)
    build(tiny, tmp_path / "out", drop=2, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists()


@pytest.mark.parametrize(
    ("scores", "drop", "expected"),
    [
        ([0.9, 0.5, 0.1, 0.2, 0.3, 0.0], 2, [2, 3]),  # the last layer (0.0) is protected
        ([0.0, 0.0, 0.5, 0.5, 0.5, 0.9], 2, [2, 3]),  # ties: lower index first; first two protected
        ([1, 1, 0.3, 0.1, 0.2, 0.05, 1], 3, [3, 4, 5]),
    ],
)
def test_choose_layers(scores: list[float], drop: int, expected: list[int]) -> None:
    assert vb.choose_layers(scores, drop) == expected


def test_smoke_patterns() -> None:
    assert vb.smoke_passed("fact", "The capital of France is Paris.")
    assert not vb.smoke_passed("fact", "The capital of France is a place")
    assert vb.smoke_passed("format", "C")
    assert vb.smoke_passed("format", " (B) 7")
    assert not vb.smoke_passed("format", "The answer is C")


def test_a_variant_failing_its_smoke_test_is_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(vb.SmokeTestFailed, match=r"failed its smoke test: .*format \(answered .*--allow-failing-smoke"):
        build(tiny, tmp_path / "out", drop=2, smoke=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_script_entry_point(tiny: Path, tmp_path: Path) -> None:
    calibration = tmp_path / "cal.json"
    calibration.write_text(json.dumps({"source": "unit", "prompts": PROMPTS}))
    cmd = [sys.executable, "-m", "variants", "build", "--model", str(tiny)]
    cmd += ["--out", str(tmp_path / "out"), "--drop", "2", "--calibration-json", str(calibration)]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # a random model fails the smoke test
    assert refused.returncode == 3, refused.stderr
    assert "failed its smoke test" in refused.stderr and "--allow-failing-smoke" in refused.stderr
    assert not (tmp_path / "out").exists()
    cmd.append("--allow-failing-smoke")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "dropping 2 of 8 layers" in done.stdout
    assert "smoke variant" in done.stdout and "WARNING" in done.stdout
    assert json.loads((tmp_path / "out" / vb.METADATA_FILE).read_text())["calibration"]["source"] == "unit"
    cmd[cmd.index("--out") + 1] = str(tmp_path / "bad")
    bad = subprocess.run([*cmd[:-5], "--drop", "9", *cmd[-3:-1]], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "can drop 1..5 of 8 layers" in bad.stderr
