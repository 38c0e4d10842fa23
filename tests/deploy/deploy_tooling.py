"""Helpers shared by the deployment checks of tests/deploy: the repository root, external tools, server flags.

A test whose tool is missing skips on a developer machine and fails under ``CI`` (.ci/run installs every
tool these tests use, through scripts/test.sh). Imported by module name: pytest puts this folder on
``sys.path`` when it collects the tests beside it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
ALERTS = ROOT / "deploy/prometheus/rules/alerts.yml"
CONTAINER_CONFIG = "/etc/llm-gateway/gateway.yaml"  # where the image reads its config

# What one vLLM-CPU server of each model held, measured on the local stack (deploy/local/backends.yaml:
# VLLM_CPU_KVCACHE_SPACE=1, --max-num-seqs 8, --max-model-len 2048) while it was being profiled: the sum
# over the API server, engine core and worker processes of their anonymous memory (Pss_Anon) and mapped files
# (what a container is charged), in GiB, the highest of the samples (docs/deploy.md, "Memory of the cpu
# profile").
MEASURED_GIB = {"smollm2-135m-instruct": 3.92, "qwen2.5-coder-0.5b-instruct": 5.54}
HEADROOM = 1.2  # a limit at least 20 % above the measurement


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tool(name: str, install: str) -> str:
    """Path of a CLI tool beside this interpreter (the .venv's pinned one) or on PATH; skip or fail (CI) if missing."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        message = f"{name} is not installed ({install})"
        if in_ci():
            pytest.fail(message + "; CI must install it (.ci/run)")
        pytest.skip(message)
    return found


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False)


def server_flags(command: list[str]) -> dict[str, str]:
    """``--key=value`` / ``--key value`` / ``--switch`` items of a vLLM command line (compose or Kubernetes)."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(command):
        item = command[i]
        assert item.startswith("--"), f"unexpected positional argument {item!r} in {command}"
        if "=" in item:
            key, value = item.split("=", 1)
        elif i + 1 < len(command) and not command[i + 1].startswith("--"):
            key, value = item, command[i + 1]
            i += 1
        else:
            key, value = item, ""
        flags[key] = value
        i += 1
    return flags


@functools.cache
def recording_rules() -> dict[str, str]:
    """Every recording rule of deploy/prometheus/rules: name → PromQL."""
    return {
        rule["record"]: rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alert of deploy/prometheus/rules/alerts.yml by name."""
    return {
        rule["alert"]: rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
