"""Settings: YAML file, ``GATEWAY_*`` environment overrides, and start-up validation that names the bad key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import Settings, SettingsError, load_settings

BASE: dict[str, Any] = {
    "server": {"host": "0.0.0.0", "port": 8080},
    "backends": [
        {"name": "b1", "url": "http://127.0.0.1:8001", "served_model": "smollm2"},
        {"name": "b2", "url": "http://127.0.0.1:8002", "served_model": "smollm2"},
    ],
    "arms": [
        {"name": "plain", "model": "smol", "backends": ["b1"], "strategy": {"kind": "plain"}},
        {
            "name": "spec",
            "model": "smol",
            "backends": ["b2"],
            "strategy": {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4},
        },
    ],
    "routing": {"policy": "least-loaded"},
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_yaml_file_is_loaded_with_defaults_for_the_rest(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE), environ={})

    assert (s.server.host, s.server.port) == ("0.0.0.0", 8080)
    assert [b.name for b in s.backends] == ["b1", "b2"]
    assert s.backends[0].base_url == "http://127.0.0.1:8001"
    assert s.backend("b2").served_model == "smollm2"
    assert [a.build_strategy().label for a in s.arms] == ["plain", "speculative-ngram-k4"]
    assert s.server.max_body_bytes == 4 * 1024 * 1024
    assert (s.health.unhealthy_after, s.timeouts.retry_after_s, s.max_attempts) == (2, 5, 3)


@pytest.mark.parametrize(
    ("environ", "read"),
    [
        ({"GATEWAY_SERVER__PORT": "9000"}, lambda s: s.server.port == 9000),
        ({"GATEWAY_SERVER__LOG_LEVEL": "debug"}, lambda s: s.server.log_level == "debug"),
        (
            {"GATEWAY_BACKENDS__0__URL": "http://10.0.0.5:8000"},
            lambda s: (
                (s.backends[0].base_url, s.backends[1].base_url) == ("http://10.0.0.5:8000", "http://127.0.0.1:8002")
            ),
        ),
        ({"GATEWAY_BACKENDS__1__API_KEY": "tok"}, lambda s: s.backends[1].api_key == "tok"),
        ({"GATEWAY_ARMS__1__BACKENDS": "[b1, b2]"}, lambda s: s.arms[1].backends == ["b1", "b2"]),
        ({"GATEWAY_HEALTH__INTERVAL_S": "0.5"}, lambda s: s.health.interval_s == 0.5),
        ({"GATEWAY_BACKENDS__0__SCRAPE_METRICS": "false"}, lambda s: s.backends[0].scrape_metrics is False),
        ({"GATEWAY_MAX_ATTEMPTS": "1"}, lambda s: s.max_attempts == 1),
        ({"gateway_server__port": "9000", "OTHER_PORT": "1"}, lambda s: s.server.port == 8080),
        ({"GATEWAY_CONFIG": "/elsewhere.yaml"}, lambda s: s.server.port == 8080),
    ],
)
def test_environment_overrides_the_file(
    tmp_path: Path, environ: dict[str, str], read: Callable[[Settings], bool]
) -> None:
    assert read(load_settings(write(tmp_path, BASE), environ=environ))


def test_environment_alone_can_configure_everything() -> None:
    environ = {
        "GATEWAY_BACKENDS": "[{name: b1, url: 'http://h:1', served_model: m}]",
        "GATEWAY_ARMS": "[{name: a, model: pub, backends: [b1]}]",
        "GATEWAY_SERVER__PORT": "8181",
    }
    s = load_settings(None, environ=environ)

    assert (s.server.port, s.arms[0].model, s.arms[0].build_strategy().label) == (8181, "pub", "plain")


def test_empty_file_means_everything_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"backends: Field required"):
        load_settings(write(tmp_path, ""), environ={})


def test_env_index_past_the_list_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"GATEWAY_BACKENDS__5__URL: index '5' does not exist"):
        load_settings(write(tmp_path, BASE), environ={"GATEWAY_BACKENDS__5__URL": "http://x:1"})


def test_env_values_are_validated_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"server\.port: Input should be less than or equal to 65535"):
        load_settings(write(tmp_path, BASE), environ={"GATEWAY_SERVER__PORT": "70000"})


def test_an_error_from_a_variable_names_the_variable(tmp_path: Path) -> None:
    bad = {**copy.deepcopy(BASE), "health": {"interval_s": -1}}
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, bad), environ={"GATEWAY_BACKENDS__1__URL": "not a url"})
    message = str(caught.value)
    assert "and GATEWAY_* variables" in message
    assert "backends[1].url: " in message and "(set by GATEWAY_BACKENDS__1__URL)" in message
    assert "health.interval_s: " in message and "health.interval_s: Input should be greater than 0\n" in message + "\n"
    environ = {"GATEWAY_BACKENDS": "[]", "GATEWAY_ARMS": "[{name: a, model: m, backends: []}]"}
    with pytest.raises(SettingsError, match=r"arms\[0\]\.backends: .* \(set by GATEWAY_ARMS\)"):
        load_settings(None, environ=environ)  # an error inside a value a variable set names it too


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutation of the base config at a dotted path (integers index lists)."""

    def apply(config: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = config
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node, dict) else node[p]
        node[last] = value

    return apply


def _append(key: str, item: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda config: config[key].append(item)


SPEC = {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4}
H1, H2 = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("colour", "red"), "colour: Extra inputs are not permitted"),
        (_set("server.prot", 1), "server.prot: Extra inputs are not permitted"),
        (_set("backends.1.weight", 2), "backends[1].weight: Extra inputs are not permitted"),
        (_set("backends.1.url", "not a url"), "backends[1].url: Input should be a valid URL"),
        (_set("backends.0.url", "ftp://h:1"), "backends[0].url: URL scheme should be 'http' or 'https'"),
        (_set("backends.0.name", "has space"), "backends[0].name: String should match pattern"),
        (_set("backends.1.name", "b1"), "backends[1].name: duplicate backend name 'b1'"),
        (_set("arms.1.name", "plain"), "arms[1].name: duplicate arm name 'plain'"),
        (_set("arms.0.backends", ["b1", "b9"]), "arms[0].backends[1]: unknown backend 'b9'; known: b1, b2"),
        (_set("arms.0.backends", []), "arms[0].backends: List should have at least 1 item"),
        (_set("arms.1.strategy", {"kind": "turbo"}), "arms[1].strategy: unknown strategy kind 'turbo'"),
        (_set("arms.1.strategy", {"method": "ngram"}), "arms[1].strategy: strategy needs a 'kind'"),
        (_set("arms.0.strategy", {"kind": "plain", "k": 2}), "arms[0].strategy: strategy 'plain' takes no parameters"),
        (
            _set("arms.1.strategy", {**SPEC, "num_speculative_tokens": 0}),
            "arms[1].strategy: strategy 'speculative': num_speculative_tokens must be an integer in 1..16, got 0",
        ),
        (
            _set("arms.1.strategy", {**SPEC, "num_speculative_tokens": 17}),
            "num_speculative_tokens must be an integer in 1..16, got 17",
        ),
        (
            _set("arms.1.strategy", {**SPEC, "num_speculative_tokens": "4"}),
            "num_speculative_tokens must be an integer in 1..16, got '4'",
        ),
        (
            _set("arms.1.strategy", {**SPEC, "num_speculative_tokens": True}),
            "num_speculative_tokens must be an integer in 1..16, got True",
        ),
        (
            _set("arms.1.strategy", {"kind": "speculative", "method": "ngram"}),
            "num_speculative_tokens must be an integer in 1..16, got None",
        ),
        (
            _set("arms.1.strategy", {**SPEC, "method": "medusa"}),
            "arms[1].strategy: strategy 'speculative': method must be one of ['ngram', 'draft'], got 'medusa'",
        ),
        (
            _set("arms.1.strategy", {**SPEC, "draft_model": "x"}),
            "arms[1].strategy: strategy 'speculative': unknown parameter(s) ['draft_model']",
        ),
        (_set("arms.0.model", "auto"), "arms[0].model: 'auto' is reserved"),
        (_set("routing.live_ttl_s", 0), "routing.live_ttl_s: Input should be greater than 0"),
        (_set("routing.policy", "random"), "routing.policy: unknown policy 'random'; available: learned, least-loaded"),
        (_set("server.port", 0), "server.port: Input should be greater than or equal to 1"),
        (_set("server.log_level", "loud"), "server.log_level: String should match pattern"),
        (_set("server.max_body_bytes", 0), "server.max_body_bytes: Input should be greater than 0"),
        (_set("max_attempts", 0), "max_attempts: Input should be greater than or equal to 1"),
        (_set("health.unhealthy_after", 0), "health.unhealthy_after: Input should be greater than or equal to 1"),
        (_set("timeouts.idle_s", -1), "timeouts.idle_s: Input should be greater than 0"),
        (_set("backends", []), "backends: List should have at least 1 item"),
        (_append("arms", {"name": "x", "model": "m"}), "arms[2].backends: Field required"),
        (_set("auth", {"keys": [{"name": "a", "sha256": "sk-plain"}]}), "auth.keys[0].sha256: String should match"),
        (_set("auth", {"keys": [{"name": "a", "key": "sk-1", "sha256": H1}]}), "auth.keys[0].key: Extra inputs"),
        (_set("auth", {"keys": [{"name": "a", "sha256": H1, "rpm": 0}]}), "auth.keys[0].rpm: Input should be greater"),
        (_set("auth", {"keys": [{"name": "a b", "sha256": H1}]}), "auth.keys[0].name: String should match pattern"),
        (
            _set("auth", {"keys": [{"name": "a", "sha256": H1}, {"name": "a", "sha256": H2}]}),
            "auth.keys[1].name: duplicate key name 'a'",
        ),
        (
            _set("auth", {"keys": [{"name": "a", "sha256": H1}, {"name": "b", "sha256": H1.upper()}]}),
            "auth.keys[1].sha256: the same key is configured twice",
        ),
        (
            _set("auth", {"keys": [{"name": "a", "sha256": H1, "models": ["smol", "gpt-9"]}]}),
            "auth.keys[0].models[1]: unknown model 'gpt-9'; known: smol",
        ),
        (
            _set("auth", {"keys": [{"name": "a", "sha256": H1, "models": ["auto"]}]}),
            "auth.keys[0].models[0]: 'auto' is implied",
        ),
        (_set("limits.max_n", 0), "limits.max_n: Input should be greater than or equal to 1"),
        (_set("limits.max_tokens", 0), "limits.max_tokens: Input should be greater than or equal to 1"),
        (_set("limits.max_message", 5), "limits.max_message: Extra inputs are not permitted"),
    ],
)
def test_each_problem_is_reported_with_its_key(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    config = copy.deepcopy(BASE)
    mutate(config)

    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, config), environ={})

    assert expected in str(info.value)
    assert str(info.value).startswith(f"invalid configuration ({tmp_path / 'gateway.yaml'}):")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE)
    config["server"]["port"] = "http"
    config["backends"][1]["url"] = "nope"
    config["arms"][0]["model"] = "auto"

    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, config), environ={})

    lines = str(info.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["server.port", "backends[1].url", "arms[0].model"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "the top level must be a mapping, got list"),
        ("just a string\n", "the top level must be a mapping, got str"),
        ("server: {port: [\n", "not valid YAML"),
    ],
)
def test_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError, match=rf"^{path}: {expected}"):
        load_settings(path, environ={})


@pytest.mark.parametrize(("name", "reason"), [("missing.yaml", "No such file or directory"), (".", "Is a directory")])
def test_unreadable_file_is_named(tmp_path: Path, name: str, reason: str) -> None:
    path = tmp_path / name
    with pytest.raises(SettingsError, match=rf"cannot read config file {path}: {reason}"):
        load_settings(path, environ={})


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"bogus": 1}, "routing.policy 'least-loaded': routing policy 'least-loaded': bad parameters"),
        ({"assumed_output_tokens": 0}, "assumed_output_tokens must be positive"),
    ],
)
def test_policy_parameters_are_checked_when_the_policy_is_built(params: dict[str, Any], expected: str) -> None:
    config = copy.deepcopy(BASE)
    config["routing"]["params"] = params
    settings = Settings.model_validate(config)

    with pytest.raises(SettingsError, match=expected):
        settings.routing.build([])


def test_auth_is_off_and_limits_have_defaults_unless_configured(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE), environ={})
    assert not s.auth.enabled
    assert (s.limits.max_tokens, s.limits.max_n, s.limits.max_messages) == (None, 16, 1024)


def test_keys_are_configured_as_hashes_and_from_the_environment(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE)
    config["auth"] = {"keys": [{"name": "team-a", "sha256": H1.upper(), "models": ["smol"], "rpm": 60, "tpm": 1000}]}
    s = load_settings(write(tmp_path, config), environ={"GATEWAY_AUTH__KEYS__0__RPM": "5"})
    key = s.auth.keys[0]
    assert (key.name, key.sha256, key.models, key.rpm, key.tpm) == ("team-a", H1, ["smol"], 5, 1000)
    assert s.auth.enabled
