"""The request mix of the load and soak runs: ``(model, route flags)`` pairs, cycled so every run sends
the same mix (pinned models and ``model: "auto"`` with each kind of routing flag).

Standard library only: imported by ``locustfile.py`` (in the load venv, beside locust) and by
``stack.py`` (in the gateway's venv).
"""

from __future__ import annotations

from typing import Any

MIX: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("smollm2-135m", None),
    ("qwen2.5-coder-0.5b", None),
    ("auto", None),
    ("auto", {"prefer": "speed"}),
    ("auto", {"prefer": "quality"}),
    ("auto", {"accuracy": "medium", "max_latency_ms": 20000}),
    ("smollm2-135m", None),
    ("auto", {"prefer": "balanced", "max_latency_ms": 5000}),
)
