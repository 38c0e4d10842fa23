"""Routing decisions for the LLM gateway: a pure library (no web framework, no HTTP client).

Prompt and caller flags in, :class:`~router.decision.Decision` out::

    from router import Arm, ArmState, RouteRequest, build_policy

    policy = build_policy("least-loaded")
    decision = policy.decide(RouteRequest(prompt="2+2?"), candidates)

The gateway imports this package; this package never imports the gateway.
"""

from router.decision import Arm, ArmState, Decision, NoArmAvailable, RouteFlags, RouteRequest, RouteUnmeetable
from router.flags import FlagError, parse_flags
from router.policy import Policy, available_policies, build_policy
from router.strategy import Strategy, StrategyError, available_strategies, build_strategy

__all__ = [
    "Arm",
    "ArmState",
    "Decision",
    "FlagError",
    "NoArmAvailable",
    "Policy",
    "RouteFlags",
    "RouteRequest",
    "RouteUnmeetable",
    "Strategy",
    "StrategyError",
    "available_policies",
    "available_strategies",
    "build_policy",
    "build_strategy",
    "parse_flags",
]
