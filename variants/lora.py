"""Low-rank adapters (LoRA) for healing a pruned variant, merged back into plain weights.

LoRA (Hu et al., 2021) trains, for a frozen linear layer ``y = W x``, two small matrices
``A`` (rank x in) and ``B`` (out x rank) so that ``y = W x + (alpha / rank) B A x``. ``B`` starts at
zero, so an adapted model starts exactly where the pruned one is. After training the product is
added into ``W`` (:func:`merge`) and the adapters are removed: the written checkpoint is a plain
Hugging Face model of the original shape that vLLM serves unmodified, with no adapter at serve time.

The adapters are parameters registered on the linear modules themselves (``lora_A``, ``lora_B``)
and applied by a forward hook, so they live in the model's ``state_dict`` (healing checkpoints save
and resume them) and no module class is replaced. torch is imported lazily: this module runs in
the backend environment (:mod:`variants.healer`), never in the gateway's.
"""

from __future__ import annotations

import math
from typing import Any

# the linear projections of a Llama/Qwen2 decoder layer (attention and MLP)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def attach(layers: list[Any], rank: int, alpha: float) -> list[str]:
    """Freeze ``layers`` and give each targeted linear layer in them a rank-``rank`` adapter.

    Returns the qualified names (relative to each layer, prefixed by its index in ``layers``) of
    the adapted projections. Uses the global torch RNG for ``A`` (Kaiming-uniform, as in the paper);
    ``B`` is zero. Raises ``ValueError`` for a rank < 1 or layers without any targeted projection.
    """
    import torch

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    scale = alpha / rank
    adapted: list[str] = []
    for index, layer in enumerate(layers):
        for p in layer.parameters():
            p.requires_grad_(False)
        for name, module in layer.named_modules():
            if name.rsplit(".", 1)[-1] not in TARGETS or not isinstance(module, torch.nn.Linear):
                continue
            a = torch.empty(rank, module.in_features, dtype=module.weight.dtype, device=module.weight.device)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b = torch.zeros(module.out_features, rank, dtype=module.weight.dtype, device=module.weight.device)
            module.register_parameter("lora_A", torch.nn.Parameter(a))
            module.register_parameter("lora_B", torch.nn.Parameter(b))
            module.lora_scale = scale
            module.lora_hook = module.register_forward_hook(_apply)
            adapted.append(f"{index}.{name}")
    if not adapted:
        raise ValueError(f"no projection named one of {', '.join(TARGETS)} in the layers to adapt")
    return adapted


def _apply(module: Any, args: tuple[Any, ...], output: Any) -> Any:
    x = args[0]
    delta = (x.to(module.lora_A.dtype) @ module.lora_A.t()) @ module.lora_B.t()
    return output + (module.lora_scale * delta).to(output.dtype)


def merge(model: Any) -> int:
    """Fold every adapter into its layer's weight (``W += scale B A``) and remove it; returns how many.

    Afterwards the model has exactly the parameters and shapes it had before :func:`attach`.
    """
    import torch

    merged = 0
    with torch.no_grad():
        for module in model.modules():
            if not hasattr(module, "lora_hook"):
                continue
            delta = module.lora_scale * (module.lora_B.float() @ module.lora_A.float())
            module.weight.add_(delta.to(module.weight.dtype))
            module.lora_hook.remove()
            for attr in ("lora_A", "lora_B"):
                delattr(module, attr)
            del module.lora_hook, module.lora_scale
            merged += 1
    return merged
