"""The learned policy: per-prompt predictions for every arm, then the caller's flags decide.

Scoring and deciding are separate (as in RouteLLM): :mod:`router.predictor` forecasts quality,
length, TTFT and speed per arm; this policy filters arms by the caller's constraints and picks
by preference, using thresholds calibrated at training time.

Decision rules, in order:

1. a pinned arm (``route.arm``) wins;
2. keep healthy arms whose predicted quality ≥ the accuracy floor, latency ≤ ``max_latency_ms``
   and TTFT ≤ ``max_ttft_ms``;
3. among those, ``speed`` takes the least predicted latency, ``quality`` the highest predicted
   quality (ties: less latency), ``balanced`` (the default) the highest
   ``quality - balanced_weight * latency_s``;
4. if none qualifies, best effort: when some arms meet the accuracy floor, the fastest of them
   (reason ``best-effort-latency``); otherwise the arm with the highest predicted quality
   (``best-effort-accuracy``).

Ties always go to configuration order, so decisions are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.artifact import ArtifactError, load_artifact
from router.decision import Arm, ArmState, Decision, NoArmAvailable, RouteRequest
from router.encoder import Encoder, encoder_kind, load_encoder
from router.features import FEATURE_NAMES, prompt_features
from router.policy import Policy, pinned_decision, register_policy
from router.predictor import Prediction, RouterModel

SHIPPED_ARTIFACTS = Path(__file__).parent / "artifacts"
DEFAULT_ARTIFACT = SHIPPED_ARTIFACTS / "local"


def artifact_path(value: str | None) -> Path:
    """The artifact directory ``value`` names: a shipped one by bare name (``local-minilm``), else a path."""
    if not value:
        return DEFAULT_ARTIFACT
    path = Path(value).expanduser()
    if len(path.parts) == 1 and not path.exists() and (SHIPPED_ARTIFACTS / value).is_dir():
        return SHIPPED_ARTIFACTS / value
    return path


def prompt_vector(encoder: Encoder, text: str) -> np.ndarray:
    """Raw (unstandardised) vector: embedding (if the encoder has one) followed by the cheap features."""
    features = prompt_features(text).astype(np.float64)
    if encoder.dim == 0:
        return features
    return np.concatenate([encoder.encode([text])[0].astype(np.float64), features])


def feature_names(encoder: Encoder) -> tuple[str, ...]:
    """Names of :func:`prompt_vector`'s entries, as an artifact records them."""
    return tuple(f"emb{i}" for i in range(encoder.dim)) + tuple(FEATURE_NAMES)


@register_policy("learned")
class LearnedPolicy(Policy):
    """Routes on per-prompt predictions from a trained artifact (``llm-gateway train``).

    Parameters: ``artifact`` — the artifact directory, or the bare name of a shipped one
    (``local``, the default; ``local-minilm``; ``local-healed``). Loading fails if the artifact is
    corrupt, its encoder is not the installed one, or it lacks a configured arm. ``load_share`` —
    how much each request already in flight on an arm's best backend slows a new one: TTFT and
    decode time are multiplied by ``1 + load_share * load``.
    The default, 0.05, is measured: on vLLM-CPU (SmolLM2-135M, one core, ``--max-num-seqs 8``) a
    stream decodes 4 % slower beside 3 others and 26 % slower beside 7 (``docs/router.md``); continuous
    batching makes extra streams nearly free until the batch is full. Raise it for backends that
    batch poorly; past ``max-num-seqs`` requests queue, which the live TTFT measurements pick up.
    The learned predictions themselves are for an idle arm, so this is what spreads a burst across
    arms and routes around a queue.
    """

    needs_features = True

    def __init__(
        self,
        artifact: str | None = None,
        *,
        load_share: float = 0.05,
        model: RouterModel | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """Load ``artifact`` and the encoder it was trained with, or (tests, evaluation) take ``model`` as is."""
        if not isinstance(load_share, int | float) or isinstance(load_share, bool) or not 0 <= load_share <= 10:
            raise ValueError(f"load_share must be a number in [0, 10], got {load_share!r}")
        self.load_share = float(load_share)
        self.artifact = artifact_path(artifact)
        self.encoder = encoder
        if model is not None:
            self.model = model
            return
        self.model = load_artifact(self.artifact)
        try:
            self.encoder = encoder or load_encoder(encoder_kind(self.model.encoder))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"cannot load the prompt encoder: {exc}") from exc
        if self.encoder.name != self.model.encoder:
            raise ArtifactError(
                f"{self.artifact}: trained with encoder {self.model.encoder!r}, "
                f"but this gateway uses {self.encoder.name!r}"
            )
        self.cheap_features = self.encoder.dim == 0  # features only: ~0.05-0.2 ms, no ONNX call
        expected = feature_names(self.encoder)
        if self.model.feature_names != expected:
            changed = sorted(set(self.model.feature_names) ^ set(expected))
            detail = f"differing: {', '.join(changed[:6])}" if changed else "same names, another order"
            raise ValueError(
                f"artifact {self.artifact} was trained on other prompt features than this version computes "
                f"({detail}); retrain it with `llm-gateway train`"
            )

    def bind(self, arms: Sequence[Arm]) -> None:
        missing = sorted({a.name for a in arms} - set(self.model.arms))
        if missing:
            raise ValueError(
                f"artifact {self.artifact} has no predictor for arm(s) {', '.join(missing)}; "
                f"profile them and retrain (trained arms: {', '.join(sorted(self.model.arms))})"
            )

    def featurize(self, prompt: str) -> Any:
        if self.encoder is None:
            raise RuntimeError("this policy was built without an encoder")
        return self.model.standardise(prompt_vector(self.encoder, prompt)), len(prompt) / 1000.0

    def predict(self, request: RouteRequest, candidates: Sequence[ArmState]) -> dict[str, Prediction]:
        x, kchars = request.features if request.features is not None else self.featurize(request.prompt)
        share = self.load_share
        live = [(s.arm.name, s.ttft_s, s.tokens_per_s, 1.0 + share * max(0.0, s.load)) for s in candidates]
        return self.model.predict(x, kchars, request.max_tokens, live)

    def accuracy_floor(self, value: float | str | None) -> float | None:
        if isinstance(value, str):
            return self.model.calibration.accuracy_levels[value]
        return value

    def decide(self, request: RouteRequest, candidates: Sequence[ArmState]) -> Decision:
        pinned = pinned_decision(request, candidates)
        if pinned is not None:
            return pinned
        healthy = [s for s in candidates if s.healthy]
        if not healthy:
            raise NoArmAvailable("no candidate arm has a healthy backend")
        preds = self.predict(request, healthy)
        flags = request.flags
        floor = self.accuracy_floor(flags.accuracy)
        max_lat = flags.max_latency_ms / 1000 if flags.max_latency_ms else None
        max_ttft = flags.max_ttft_ms / 1000 if flags.max_ttft_ms else None
        order = {s.arm.name: i for i, s in enumerate(healthy)}
        accurate = [s for s in healthy if floor is None or preds[s.arm.name].quality >= floor]
        feasible = [
            s
            for s in accurate
            if (max_lat is None or preds[s.arm.name].latency_s <= max_lat)
            and (max_ttft is None or preds[s.arm.name].ttft_s <= max_ttft)
        ]
        prefer = flags.prefer or "balanced"
        weight = self.model.calibration.balanced_weight

        def by_latency(s: ArmState) -> tuple[float, int]:
            return preds[s.arm.name].latency_s, order[s.arm.name]

        def by_quality(s: ArmState) -> tuple[float, float, int]:
            p = preds[s.arm.name]
            return -p.quality, p.latency_s, order[s.arm.name]

        def by_balance(s: ArmState) -> tuple[float, int]:
            p = preds[s.arm.name]
            return -(p.quality - weight * p.latency_s), order[s.arm.name]

        if feasible:
            key = {"speed": by_latency, "quality": by_quality}.get(prefer, by_balance)
            ranked = sorted(feasible, key=key)  # type: ignore[arg-type]
            reason = f"prefer-{prefer}"
            why = f"{len(feasible)} of {len(healthy)} arms meet the constraints; chose by {prefer}"
        elif accurate:
            ranked = sorted(accurate, key=by_latency)
            reason = "best-effort-latency"
            why = "no arm meets the latency budget at the accuracy floor; chose the fastest accurate arm"
        else:
            ranked = sorted(healthy, key=by_quality)
            reason = "best-effort-accuracy"
            why = f"no arm reaches the accuracy floor {floor:.2f}; chose the highest predicted quality"
        rest = [s for s in healthy if s not in ranked]
        arms = tuple(s.arm for s in [*ranked, *sorted(rest, key=by_latency)])
        return Decision(arm=arms[0], reason=reason, ranked=arms, predictions=preds, explanation=why)
