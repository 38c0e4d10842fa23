"""Layer-pruned model variants by Block Influence (ShortGPT): the torch side of ``make-variant``.

Runs in the backend environment (torch + transformers), never in the gateway process: the
``llm-gateway make-variant`` command (:mod:`lab.variant`) runs it with the backend venv's Python::

    vllm-venv/bin/python -m variants build --model SRC --out DST --drop 4 \\
        --calibration-json prompts.json --seed 0

At the top level it imports only the standard library (torch is imported when the work starts).
Steps:

1. **Score** every decoder layer by its Block Influence, ``BI_i = 1 - cos(x_in, x_out)`` per
   token, averaged over the tokens of a prompt and then over the calibration prompts (float32,
   chat template applied, each prompt cut to ``--max-tokens``). A layer that barely changes its
   hidden state matters little.
2. **Choose** the ``N`` lowest-scoring layers, never the first two nor the last (both models of
   the local stack depend on them); ties go to the lower index, so the choice is deterministic.
3. **Prune**: remove those layers, renumber ``model.layers`` and every ``layer_idx``, set
   ``num_hidden_layers``, cut ``layer_types``, recount ``max_window_layers``, keep
   ``tie_word_embeddings`` as in the source (a flipped flag makes vLLM answer empty text).
4. **Smoke-test** the source and the variant with transformers ``generate`` (a fixed fact and
   a format-constrained question), then save a standard Hugging Face checkpoint (weights in the
   source dtype, tokenizer, chat template and generation config copied from the source) plus
   ``variant.json``: source, dropped layers with scores, calibration hash, seed, smoke test.

Output is deterministic for a given source, calibration set, seed and machine (``variant.json``
holds no timestamps). A variant that fails its smoke test is **not written** (exit status 3, a
message naming the failed test), unless ``--allow-failing-smoke`` is given: then it is written
with a warning and the failure is recorded. ``make-variant --heal`` builds the pruned model that
way and lets :mod:`variants.healer` apply the smoke test after healing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from variants.progress import progress

METADATA_FILE = "variant.json"
PROTECT_FIRST = 2
PROTECT_LAST = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_NOT_COPIED = {"config.json", METADATA_FILE, "model.safetensors.index.json", "pytorch_model.bin.index.json"}

SMOKE_TESTS: tuple[dict[str, Any], ...] = (
    {
        "name": "fact",
        "prompt": "What is the capital of France? Answer in one word.",
        "pattern": r"\bparis\b",
    },
    {
        "name": "format",
        "prompt": (
            "Which of these numbers is even?\nA. 3\nB. 7\nC. 8\nD. 5\n\n"
            "Answer with the letter of the correct option only."
        ),
        "pattern": r"^\W*\(?[ABCD]\b",
    },
)


class VariantError(ValueError):
    """Bad arguments or a model this builder cannot prune (no ``model.layers``, too few layers)."""


class SmokeTestFailed(VariantError):
    """The built (or healed) variant failed a smoke test, so it was not written."""


# -- pure helpers (no torch) ----------------------------------------------------------------------


def calibration_hash(prompts: list[dict[str, Any]]) -> str:
    """sha256 of the calibration conversations (ids excluded), canonical JSON."""
    blob = json.dumps([p["messages"] for p in prompts], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def drop_count(num_layers: int, drop: int | None, keep_ratio: float | None) -> int:
    """How many layers to drop, from ``--drop N`` or ``--keep-ratio R`` (kept = round(R * layers))."""
    if (drop is None) == (keep_ratio is None):
        raise VariantError("give exactly one of --drop and --keep-ratio")
    if keep_ratio is not None:
        if not 0.0 < keep_ratio < 1.0:
            raise VariantError(f"--keep-ratio must be in (0, 1), got {keep_ratio}")
        drop = num_layers - round(keep_ratio * num_layers)
    assert drop is not None
    most = num_layers - PROTECT_FIRST - PROTECT_LAST
    if not 1 <= drop <= most:
        raise VariantError(
            f"can drop 1..{most} of {num_layers} layers (the first {PROTECT_FIRST} and the last "
            f"{PROTECT_LAST} are kept), asked for {drop}"
        )
    return drop


def choose_layers(scores: list[float], drop: int) -> list[int]:
    """Indices of the ``drop`` least important layers (lowest score, then lowest index), sorted."""
    n = len(scores)
    candidates = [i for i in range(PROTECT_FIRST, n - PROTECT_LAST)]
    if drop > len(candidates):
        raise VariantError(f"cannot drop {drop} of {n} layers")
    ranked = sorted(candidates, key=lambda i: (scores[i], i))
    return sorted(ranked[:drop])


def smoke_passed(name: str, text: str) -> bool:
    test = next(t for t in SMOKE_TESTS if t["name"] == name)
    return re.search(test["pattern"], text.strip(), re.IGNORECASE) is not None


def smoke_report(results: dict[str, dict[str, Any] | None]) -> list[str]:
    """One line per test and model: ``smoke <label> <test> pass|FAIL <answer>``."""
    lines = []
    for label, result in results.items():
        for t in (result or {}).get("tests", []):
            lines.append(f"    smoke {label:7s} {t['name']:6s} {'pass' if t['passed'] else 'FAIL'}  {t['answer']!r}")
    return lines


def failed_tests(result: dict[str, Any]) -> str:
    return ", ".join(f"{t['name']} (answered {t['answer']!r})" for t in result["tests"] if not t["passed"])


# -- torch side ---------------------------------------------------------------------------------


def encode(tokenizer: Any, messages: list[dict[str, str]], max_tokens: int | None = None) -> Any:
    """Token ids (a ``1 x n`` tensor) of ``messages`` as the model is prompted: the chat template with the
    generation prompt when the tokenizer has one, else the contents joined by newlines; cut to ``max_tokens``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer("\n".join(m["content"] for m in messages), return_tensors="pt")
    ids = enc["input_ids"]
    return ids[:, :max_tokens] if max_tokens else ids


def decoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of decoder layers (``model.model.layers`` for Llama/Qwen2 families)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise VariantError(f"{type(model).__name__} has no model.layers: only Llama-style decoders are supported")
    return layers


def block_influence(model: Any, tokenizer: Any, prompts: list[dict[str, Any]], max_tokens: int = 256) -> list[float]:
    """Mean Block Influence of each decoder layer over ``prompts`` (``[{"messages": [...]}, ...]``)."""
    import torch

    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    inputs: dict[int, Any] = {}
    handles = []

    def pre_hook(i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def post_hook(i: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            x, y = inputs.pop(i).float()[0], out.float()[0]
            sums[i] += float((1.0 - torch.nn.functional.cosine_similarity(x, y, dim=-1)).mean())

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(i)))
    try:
        with torch.inference_mode(), progress(len(prompts), "layer scoring", "prompt") as bar:
            for p in prompts:
                model(input_ids=encode(tokenizer, p["messages"], max_tokens), use_cache=False)
                bar.update(1)
    finally:
        for h in handles:
            h.remove()
    return [s / len(prompts) for s in sums]


def prune(model: Any, drop: list[int]) -> list[int]:
    """Remove layers ``drop`` in place, renumber and fix the config; return the kept source indices."""
    import torch

    layers = decoder_layers(model)
    config = model.config
    n = len(layers)
    kept = [i for i in range(n) if i not in set(drop)]
    new_layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    model.model.layers = new_layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        config.layer_types = [layer_types[i] for i in kept]
    mwl = getattr(config, "max_window_layers", None)
    if isinstance(mwl, int):
        config.max_window_layers = sum(1 for i in kept if i < mwl)
    config.num_hidden_layers = len(kept)
    return kept


def smoke_test(model: Any, tokenizer: Any, max_new_tokens: int = 16) -> dict[str, Any]:
    """Greedy answers to :data:`SMOKE_TESTS`; ``passed`` when every answer matches its pattern."""
    import torch

    results = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for test in SMOKE_TESTS:
        ids = encode(tokenizer, [{"role": "user", "content": test["prompt"]}])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        results.append({"name": test["name"], "answer": text, "passed": smoke_passed(test["name"], text)})
    return {"passed": all(r["passed"] for r in results), "tests": results}


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy tokenizer, chat template, generation config etc. (not weights, config or metadata)."""
    for f in sorted(src.iterdir()):
        skip = f.name.startswith(".") or f.name in _NOT_COPIED or f.name.endswith(_WEIGHT_SUFFIXES)
        if f.is_file() and not skip:
            shutil.copy2(f, dst / f.name)


def _score_layers(
    model: Any, tokenizer: Any, prompts: list[dict[str, Any]], count: int, max_tokens: int, log: Any, header: str
) -> tuple[list[float], list[int]]:
    """Block Influence of every layer and the ``count`` layers to drop; logs the ranking."""
    n = len(decoder_layers(model))
    log(header)
    scores = block_influence(model, tokenizer, prompts, max_tokens)
    dropped = choose_layers(scores, count)
    ranked = sorted(range(n), key=lambda i: (scores[i], i))
    log("    Block Influence (1 - cos(in, out)), lowest first; * = dropped, P = protected:")
    for i in ranked:
        mark = "*" if i in dropped else ("P" if i < PROTECT_FIRST or i >= n - PROTECT_LAST else " ")
        log(f"    {mark} layer {i:3d}  {scores[i]:.5f}")
    log(f"==> dropping {count} of {n} layers: {dropped} (least influence; first {PROTECT_FIRST} and last kept)")
    return scores, dropped


def _prune_tested(
    model: Any, tokenizer: Any, dropped: list[int], smoke: bool, allow_failing_smoke: bool, out_dir: Path, log: Any
) -> tuple[list[int], dict[str, Any] | None, dict[str, Any] | None]:
    """Prune ``dropped`` with a smoke test before and after (``smoke``): the kept source layers and
    both results. Raises :class:`SmokeTestFailed` when the variant fails, unless ``allow_failing_smoke``."""
    source_smoke = smoke_test(model, tokenizer) if smoke else None
    kept = prune(model, dropped)
    variant_smoke = smoke_test(model, tokenizer) if smoke else None
    if variant_smoke is not None and not variant_smoke["passed"]:
        for line in smoke_report({"source": source_smoke, "variant": variant_smoke}):
            log(line)
        if not allow_failing_smoke:
            raise SmokeTestFailed(
                f"the variant failed its smoke test: {failed_tests(variant_smoke)}; not written to {out_dir}. "
                "Drop fewer layers, heal it (make-variant --heal), or pass --allow-failing-smoke to write it anyway"
            )
    return kept, source_smoke, variant_smoke


def _metadata(
    model_dir: Path,
    prompts: list[dict[str, Any]],
    scores: list[float],
    dropped: list[int],
    kept: list[int],
    *,
    calibration_source: str,
    max_tokens: int,
    seed: int,
    dtype: str,
    tie: bool,
    smoke: dict[str, dict[str, Any] | None],
    versions: dict[str, str],
) -> dict[str, Any]:
    """The ``variant.json`` document (no timestamps: a rebuild writes the same bytes)."""
    n = len(scores)
    return {
        "format": 1,
        "method": "block-influence (ShortGPT): 1 - cos(layer input, layer output), mean over tokens and prompts",
        "source_model": str(model_dir.resolve()),
        "source_layers": n,
        "num_hidden_layers": len(kept),
        "dropped": [{"layer": i, "block_influence": round(scores[i], 6)} for i in dropped],
        "kept_source_layers": kept,
        "protected": [*range(PROTECT_FIRST), *range(n - PROTECT_LAST, n)],
        "block_influence": [round(s, 6) for s in scores],
        "calibration": {
            "source": calibration_source,
            "samples": len(prompts),
            "max_tokens": max_tokens,
            "sha256": calibration_hash(prompts),
            "ids": [p.get("id") for p in prompts],
        },
        "seed": seed,
        "dtype": dtype,
        "tie_word_embeddings": tie,
        "smoke_test": smoke,
        "versions": versions,
    }


def _save(model: Any, model_dir: Path, out_dir: Path, dtype: Any, tie: bool, layers: int) -> Path:
    """Save the pruned model in ``dtype`` with the source's side files into ``<out_dir>.tmp`` and check
    its config; return that folder (the caller adds the metadata and renames it into place)."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy_side_files(model_dir, tmp)
    model.to(dtype).save_pretrained(tmp)
    saved = json.loads((tmp / "config.json").read_text())
    if bool(saved.get("tie_word_embeddings", False)) != tie or saved.get("num_hidden_layers") != layers:
        raise VariantError(f"saved config is inconsistent: {saved}")
    return tmp


def build(
    model_dir: Path,
    out_dir: Path,
    prompts: list[dict[str, Any]],
    *,
    drop: int | None = None,
    keep_ratio: float | None = None,
    seed: int = 0,
    max_tokens: int = 256,
    calibration_source: str = "",
    smoke: bool = True,
    allow_failing_smoke: bool = False,
    force: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Score, prune, smoke-test and save a variant of ``model_dir`` in ``out_dir``; return its metadata.

    Raises :class:`SmokeTestFailed` (nothing written) when the variant fails a smoke test, unless
    ``allow_failing_smoke``; :class:`VariantError` for bad arguments or an existing output.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not prompts:
        raise VariantError("no calibration prompts")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise VariantError(f"{out_dir} exists and is not empty (use --force to replace it)")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    source_config = json.loads((model_dir / "config.json").read_text())
    source_dtype = str(source_config.get("dtype") or source_config.get("torch_dtype") or "float32")
    tie = bool(getattr(model.config, "tie_word_embeddings", False))
    n = len(decoder_layers(model))
    count = drop_count(n, drop, keep_ratio)

    header = f"==> scoring {n} layers of {model_dir.name} on {len(prompts)} calibration prompts ({calibration_source})"
    scores, dropped = _score_layers(model, tokenizer, prompts, count, max_tokens, log, header)
    kept, source_smoke, variant_smoke = _prune_tested(
        model, tokenizer, dropped, smoke, allow_failing_smoke, out_dir, log
    )
    tmp = _save(model, model_dir, out_dir, getattr(torch, source_dtype), tie, len(kept))
    meta = _metadata(
        model_dir,
        prompts,
        scores,
        dropped,
        kept,
        calibration_source=calibration_source,
        max_tokens=max_tokens,
        seed=seed,
        dtype=source_dtype,
        tie=tie,
        smoke={"source": source_smoke, "variant": variant_smoke},
        versions={"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
    )
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(f"==> wrote {out_dir} ({len(kept)} layers, {source_dtype}, tie_word_embeddings={tie})")
    if variant_smoke is not None:
        if variant_smoke["passed"]:
            for line in smoke_report({"source": source_smoke, "variant": variant_smoke}):
                log(line)
        else:
            log(
                "WARNING: the variant failed its smoke test (see above) and was written because of "
                "--allow-failing-smoke: it may not answer usefully until healed"
            )
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m variants build", description="Build a layer-pruned variant of a Hugging Face causal LM."
    )
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--drop", type=int)
    group.add_argument("--keep-ratio", type=float)
    parser.add_argument("--calibration-json", required=True, type=Path, help='{"source": ..., "prompts": [...]}')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=256, help="calibration prompt length cap")
    parser.add_argument("--no-smoke-test", action="store_true")
    parser.add_argument("--allow-failing-smoke", action="store_true", help="write a variant that fails its smoke test")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    data = json.loads(args.calibration_json.read_text())
    try:
        build(
            args.model,
            args.out,
            data["prompts"],
            drop=args.drop,
            keep_ratio=args.keep_ratio,
            seed=args.seed,
            max_tokens=args.max_tokens,
            calibration_source=data.get("source", str(args.calibration_json)),
            smoke=not args.no_smoke_test,
            allow_failing_smoke=args.allow_failing_smoke,
            force=args.force,
        )
    except SmokeTestFailed as exc:
        print(f"make-variant: {exc}", file=sys.stderr)
        return 3
    except VariantError as exc:
        print(f"make-variant: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
