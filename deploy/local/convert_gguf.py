"""Convert a GGUF checkpoint into a Hugging Face safetensors directory that vLLM serves.

Runs inside the backend environment (torch + transformers + gguf), never in the gateway's.
vLLM 0.32 no longer loads GGUF directly, so the weights are dequantised once to bfloat16.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    """Write ``out`` (config, tokenizer, bf16 safetensors) from the GGUF file ``gguf``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src_dir, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(
        src_dir,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # atomic: a half-written model directory is never left behind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    convert(args.gguf, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
