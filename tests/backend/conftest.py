"""The backend tier: tests that need torch + transformers, run with the backend environment's Python::

    ~/.cache/llm-gateway/vllm-venv/bin/python -m pytest tests/backend

(``scripts/test.sh`` runs it in ``all`` and ``e2e``). In the gateway's own venv, which never has
torch, the tier is not collected.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
    collect_ignore_glob = ["test_*.py"]
