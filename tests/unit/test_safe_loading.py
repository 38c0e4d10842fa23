"""Configuration and router artifacts are data: loading them never executes code (no YAML tags, no pickle)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gateway.settings import SettingsError, load_settings
from router.artifact import ArtifactError, load_artifact

SHIPPED = Path(__file__).resolve().parents[2] / "router" / "artifacts" / "local"


class Exploit:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_a_yaml_python_tag_in_the_config_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = tmp_path / "gateway.yaml"
    config.write_text(f'server: !!python/object/apply:pathlib.Path.write_text ["{marker}", "pwned"]\n')

    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(config, environ={})
    assert not marker.exists()


def test_a_yaml_python_tag_in_an_environment_value_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    environ = {"GATEWAY_SERVER__HOST": f'!!python/object/apply:pathlib.Path.write_text ["{marker}", "pwned"]'}
    with pytest.raises(SettingsError, match="GATEWAY_SERVER__HOST: not a valid YAML value"):
        load_settings(None, environ=environ)
    assert not marker.exists()


def test_a_pickled_array_in_the_router_artifact_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    artifact = tmp_path / "artifact"
    shutil.copytree(SHIPPED, artifact)
    with np.load(artifact / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["mean"] = np.array([Exploit(marker)], dtype=object)  # stored with pickle
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    weights = buf.getvalue()
    (artifact / "weights.npz").write_bytes(weights)
    doc = json.loads((artifact / "router.json").read_text())
    doc["weights_sha256"] = hashlib.sha256(weights).hexdigest()  # so the hash check passes and np.load runs
    (artifact / "router.json").write_text(json.dumps(doc))

    with pytest.raises(ArtifactError):
        load_artifact(artifact)
    assert not marker.exists()


def test_the_shipped_artifact_loads_without_pickle() -> None:
    assert load_artifact(SHIPPED).arms
