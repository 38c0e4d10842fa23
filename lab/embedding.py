"""Prompt vectors for offline training and evaluation, with a progress bar on stderr."""

from __future__ import annotations

import sys
import time

import numpy as np


def show_progress(done: int, total: int, label: str, started: float) -> None:
    if not sys.stderr.isatty() and done not in (total,) and done % 50:
        return
    rate = done / max(time.monotonic() - started, 1e-9)
    width = 30
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f"\r  {label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {rate:.0f}/s ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def embed(ids: list[str], texts: dict[str, str], kind: str) -> tuple[dict[str, np.ndarray], str, tuple[str, ...]]:
    """Each id's prompt vector under encoder ``kind``; the encoder's name and feature names."""
    from router.encoder import load_encoder
    from router.learned import feature_names, prompt_vector

    encoder = load_encoder(kind)
    out: dict[str, np.ndarray] = {}
    started = time.monotonic()
    for n, pid in enumerate(ids, 1):
        out[pid] = prompt_vector(encoder, texts[pid])
        show_progress(n, len(ids), "embedding", started)
    return out, encoder.name, feature_names(encoder)
