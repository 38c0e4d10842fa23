"""Router artifacts on disk: a directory with ``router.json`` (metadata, scalars) and
``weights.npz`` (arrays). Loading never executes code: JSON and ``np.load(allow_pickle=False)``.

:func:`load_artifact` refuses, with a message that says why, an artifact whose format is
unknown, whose weights do not match the recorded SHA-256 (corrupt or edited), whose shapes are
inconsistent, whose encoder differs from the one in use, or which lacks an arm the deployment
routes to.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from router.calibration import Isotonic, LatencyMargins
from router.families import FamilyClassifier
from router.predictor import ArmModel, Calibration, RouterModel

FORMAT = "llm-gateway-router/2"
OLD_FORMATS = {"llm-gateway-router/1": "uncalibrated quality, no latency margins, absolute accuracy levels"}
_PIECES = ("quality_w", "length_w", "speed_w")
_SCALARS = ("ttft_intercept_s", "ttft_per_kchar_s", "median_tokens_per_s", "median_ttft_s")


class ArtifactError(ValueError):
    """The artifact cannot be used; the message names the file and the reason."""


def save_artifact(model: RouterModel, directory: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``model`` to ``directory`` (created); returns the path of ``router.json``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"mean": model.mean, "std": model.std}
    for name, arm in model.arms.items():
        for piece in _PIECES:
            arrays[f"arm:{name}:{piece}"] = getattr(arm, piece)
    if model.families is not None:
        arrays["family_w"] = model.families.weights
    if model.knn_x is not None:
        arrays["knn_x"] = model.knn_x
        for name, labels in model.knn_y.items():
            arrays[f"knn_y:{name}"] = labels
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    weights = buf.getvalue()
    (out / "weights.npz").write_bytes(weights)
    doc = {
        "format": FORMAT,
        "encoder": model.encoder,
        "feature_names": list(model.feature_names),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "calibration": {
            "balanced_weight": model.calibration.balanced_weight,
            "accuracy_levels": model.calibration.accuracy_levels,
            "quality_maps": {a: m.as_dict() for a, m in model.calibration.quality_maps.items()},
            "latency_margins": model.calibration.margins.as_dict(),
        },
        "arms": {
            name: {
                **{s: getattr(arm, s) for s in _SCALARS},
                "quality_knn_k": arm.quality_knn_k,
                "ttft_floor_s": arm.ttft_floor_s,
            }
            for name, arm in model.arms.items()
        },
        "metadata": metadata,
    }
    if model.families is not None:
        doc["families"] = list(model.families.names)
    path = out / "router.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``router.json`` document (no validation of the weights)."""
    path = Path(directory) / "router.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read router metadata: {exc}") from None
    if isinstance(doc, dict) and doc.get("format") in OLD_FORMATS:
        raise ArtifactError(
            f"{path}: artifact format {doc['format']!r} ({OLD_FORMATS[doc['format']]}) is no longer served; "
            f"retrain it with `llm-gateway train` to get format {FORMAT!r}"
        )
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a router artifact of format {FORMAT!r}")
    return doc


def load_artifact(directory: str | Path, encoder: str | None = None, arms: Iterable[str] | None = None) -> RouterModel:
    """Load and check an artifact. ``encoder``/``arms``: what the running deployment uses."""
    doc = read_metadata(directory)
    wpath = Path(directory) / "weights.npz"
    try:
        weights = wpath.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{wpath}: cannot read weights: {exc.strerror}") from None
    if hashlib.sha256(weights).hexdigest() != doc.get("weights_sha256"):
        raise ArtifactError(f"{wpath}: SHA-256 does not match router.json (corrupt or modified artifact)")
    if encoder is not None and doc["encoder"] != encoder:
        raise ArtifactError(f"{directory}: trained with encoder {doc['encoder']!r}, but this gateway uses {encoder!r}")
    try:
        with np.load(io.BytesIO(weights), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
        dim = len(doc["feature_names"])
        if arrays["mean"].shape != (dim,) or arrays["std"].shape != (dim,):
            raise ArtifactError(f"{directory}: standardisation arrays do not match {dim} features")
        models = {}
        for name, scalars in doc["arms"].items():
            pieces = {p: arrays[f"arm:{name}:{p}"] for p in _PIECES}
            for p, w in pieces.items():
                if w.shape != (dim + 1,):
                    raise ArtifactError(f"{directory}: arm {name!r} {p} has shape {w.shape}, expected {(dim + 1,)}")
            k = int(scalars.get("quality_knn_k", 0))
            if k and (
                f"knn_y:{name}" not in arrays
                or arrays["knn_x"].shape[1:] != (dim,)
                or arrays[f"knn_y:{name}"].shape != (arrays["knn_x"].shape[0],)
            ):
                raise ArtifactError(f"{directory}: arm {name!r} uses a kNN quality head but its neighbours are missing")
            models[name] = ArmModel(
                quality_w=pieces["quality_w"],
                length_w=pieces["length_w"],
                speed_w=pieces["speed_w"],
                **{s: float(scalars[s]) for s in _SCALARS},  # type: ignore[arg-type]
                quality_knn_k=k,
                ttft_floor_s=float(scalars.get("ttft_floor_s", 0.0)),  # absent before it existed: no floor
            )
        cal = doc["calibration"]
        calibration = Calibration(
            balanced_weight=float(cal["balanced_weight"]),
            accuracy_levels={k: float(v) for k, v in cal["accuracy_levels"].items()},
            quality_maps={a: Isotonic.from_dict(m) for a, m in cal["quality_maps"].items()},
            margins=LatencyMargins.from_dict(cal["latency_margins"]),
        )
        if set(calibration.accuracy_levels) != {"low", "medium", "high"}:
            raise ArtifactError(f"{directory}: accuracy_levels must name low, medium and high")
        families = _families(doc, arrays, dim, directory)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{directory}: malformed artifact ({type(exc).__name__}: {exc})") from None
    missing = sorted(set(arms or ()) - set(models))
    if missing:
        raise ArtifactError(
            f"{directory}: no predictor for arm(s) {', '.join(missing)}; profile and retrain "
            f"(trained arms: {', '.join(sorted(models))})"
        )
    return RouterModel(
        encoder=doc["encoder"],
        feature_names=tuple(doc["feature_names"]),
        mean=arrays["mean"],
        std=arrays["std"],
        arms=models,
        calibration=calibration,
        knn_x=arrays.get("knn_x"),
        knn_y={n: arrays[f"knn_y:{n}"] for n, m in models.items() if m.quality_knn_k},
        families=families,
    )


def _families(
    doc: dict[str, Any], arrays: dict[str, np.ndarray], dim: int, directory: str | Path
) -> FamilyClassifier | None:
    """The optional task-family classifier (absent in artifacts trained before it existed)."""
    names = doc.get("families")
    if names is None:
        return None
    weights = arrays.get("family_w")
    if not isinstance(names, list) or weights is None or weights.shape != (dim + 1, len(names)):
        raise ArtifactError(f"{directory}: the task-family classifier does not match its {len(names or [])} names")
    return FamilyClassifier(names=tuple(str(n) for n in names), weights=weights)
