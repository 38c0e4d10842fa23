"""Resumable healing state for :mod:`variants.healer`: the hashes that fingerprint a run (and
key the teacher-answer cache), checkpoints with a sha256 sidecar, and the Ctrl-C / SIGTERM flag that
lets a step finish before the checkpoint is saved.

Imports only the standard library at the top (torch inside the checkpoint functions), so the healer
can run as a script in the backend environment and its tests can import it anywhere.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from variants.builder import VariantError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"


class CheckpointError(VariantError):
    """A resume checkpoint that is corrupted or belongs to another run."""


def sha256_json(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the checkpoint's weight files and config (names and contents, sorted)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.name == "config.json" or f.name.endswith((".safetensors", ".bin")):
            h.update(f.name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()


def save_checkpoint(work: Path, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically plus a sidecar with its sha256 and the run's fingerprint."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    tmp = work / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    digest = file_sha256(tmp)
    tmp.replace(work / CHECKPOINT)
    meta = {"sha256": digest, "step": state["step"], "fingerprint": fingerprint}
    (work / (CHECKPOINT_META + ".tmp")).write_text(json.dumps(meta, indent=2))
    (work / (CHECKPOINT_META + ".tmp")).replace(work / CHECKPOINT_META)


def load_checkpoint(work: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``work`` if any; :class:`CheckpointError` if corrupted or from another run."""
    import torch

    ckpt, meta_path = work / CHECKPOINT, work / CHECKPOINT_META
    if not ckpt.exists() and not meta_path.exists():
        return None
    hint = f"(delete {work} or pass --restart to start over)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {meta_path} unreadable: {exc} {hint}") from exc
    if not ckpt.exists() or file_sha256(ckpt) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {ckpt} is corrupted: its sha256 does not match {meta_path} {hint}")
    theirs = meta.get("fingerprint", {})
    diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {fingerprint.get(k)!r}" for k in diff)
        raise CheckpointError(f"checkpoint {ckpt} belongs to another healing run ({details}) {hint}")
    try:
        state: dict[str, Any] = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise CheckpointError(f"checkpoint {ckpt} cannot be loaded: {exc} {hint}") from exc
    return state


class StopFlag:
    """Set by SIGINT/SIGTERM: the training loop finishes its step, saves and exits 130."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.set = True
        print("\n==> interrupted: finishing this step, saving the checkpoint", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
