"""The settings of one healing run (:func:`variants.healer.heal`), validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from variants.builder import VariantError


@dataclass(frozen=True)
class HealConfig:
    """How to heal: the training settings (the first block: they fingerprint a checkpoint), where the
    data and work go, and what to do with existing output. The defaults are the CLI's."""

    steps: int = 200
    seq_len: int = 320
    batch_size: int = 4
    lr: float = 5e-5
    warmup: int = 20
    seed: int = 0
    ce_weight: float = 0.5
    train_layers: str = "from-gap"  # or "all" (distill.healed_layers)
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: float = 32.0
    answer_tokens: int = 192  # teacher answer length per prompt
    save_every: int = 25  # checkpoint every K steps
    task: str = "mixed"  # recorded: the healing prompts' family
    data_source: str = ""  # recorded: where the prompts came from
    cache_dir: Path | None = None  # teacher answers (default: the work folder)
    work_dir: Path | None = None  # checkpoints (default: <out>.heal-work)
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    smoke: bool = True
    allow_failing_smoke: bool = False
    restart: bool = False  # discard an existing checkpoint
    force: bool = False  # replace a non-empty output folder

    def validate(self) -> None:
        """:class:`VariantError` naming the first bad setting."""
        for name in ("steps", "seq_len", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise VariantError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise VariantError(f"--lr must be > 0, got {self.lr}")
        if self.lora_rank < 0 or (self.lora_rank > 0 and not self.lora_alpha > 0):
            raise VariantError(
                f"--lora-rank must be >= 0 and --lora-alpha > 0, got {self.lora_rank} and {self.lora_alpha}"
            )

    def settings(self) -> dict[str, Any]:
        """The run's training settings: part of the checkpoint fingerprint and of the written metadata."""
        out = {k: getattr(self, k) for k in ("seed", "batch_size", "seq_len", "lr", "warmup", "ce_weight")}
        out["train_layers"] = self.train_layers
        if self.lora_rank:
            out.update(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha)
        return out
