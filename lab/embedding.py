"""Prompt vectors for offline training and evaluation, with a progress bar on stderr."""

from __future__ import annotations

import numpy as np

from lab.progress import progress


def embed(ids: list[str], texts: dict[str, str], kind: str) -> tuple[dict[str, np.ndarray], str, tuple[str, ...]]:
    """Each id's prompt vector under encoder ``kind``; the encoder's name and feature names."""
    from router.encoder import load_encoder
    from router.learned import feature_names, prompt_vector

    encoder = load_encoder(kind)
    out: dict[str, np.ndarray] = {}
    with progress(len(ids), "embedding", "prompt") as bar:
        for pid in ids:
            out[pid] = prompt_vector(encoder, texts[pid])
            bar.update(1)
    return out, encoder.name, feature_names(encoder)
