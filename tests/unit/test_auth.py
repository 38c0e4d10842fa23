"""API keys: hashing, where the key is read from, and what a missing or wrong key gets."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth import ApiKey, KeyStore, hash_key
from gateway.errors import Unauthorized
from gateway.settings import AuthSettings

KEY = "sk-team-a-0123456789"
STORE = KeyStore(
    AuthSettings.model_validate(
        {
            "keys": [
                {"name": "team-a", "sha256": hash_key(KEY).upper(), "models": ["smol"], "rpm": 10},
                {"name": "ops", "sha256": hash_key("sk-ops")},
            ]
        }
    )
)


def test_hash_is_the_hex_sha256_of_the_stripped_key() -> None:
    assert hash_key(f"  {KEY}\n") == hashlib.sha256(KEY.encode()).hexdigest()


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ({"authorization": f"Bearer {KEY}"}, "team-a"),
        ({"authorization": f"bearer   {KEY} "}, "team-a"),
        ({"x-api-key": "sk-ops"}, "ops"),
        ({"authorization": "Bearer sk-ops", "x-api-key": KEY}, "ops"),  # Authorization wins
    ],
)
def test_a_configured_key_is_found(headers: dict[str, str], name: str) -> None:
    key = STORE.authenticate(headers)
    assert key is not None and key.name == name


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"x-api-key": "  "}, "missing_api_key"),
        ({"authorization": "Bearer sk-wrong"}, "invalid_api_key"),
        ({"x-api-key": "sk-wrong"}, "invalid_api_key"),
        ({"authorization": f"Basic {KEY}"}, "invalid_api_key"),
        ({"authorization": "Bearer"}, "invalid_api_key"),
        ({"authorization": hash_key(KEY)}, "invalid_api_key"),
        ({"authorization": f"Bearer {hash_key(KEY)}"}, "invalid_api_key"),  # the digest is not the key
    ],
)
def test_missing_or_wrong_keys_get_401_without_echoing_the_key(headers: dict[str, str], code: str) -> None:
    with pytest.raises(Unauthorized) as info:
        STORE.authenticate(headers)
    err = info.value
    assert (err.status, err.code, err.type) == (401, code, "invalid_request_error")
    assert err.headers["www-authenticate"].startswith('Bearer realm="llm-gateway"')
    assert KEY not in err.message and "sk-wrong" not in err.message


def test_without_keys_authentication_is_off() -> None:
    store = KeyStore(AuthSettings())
    assert not store.enabled
    assert store.authenticate({}) is None
    assert store.authenticate({"authorization": "Bearer anything"}) is None


@pytest.mark.parametrize(
    ("models", "model", "allowed"),
    [(None, "coder", True), (frozenset({"smol"}), "smol", True), (frozenset({"smol"}), "coder", False)],
    ids=["unrestricted", "listed", "not-listed"],
)
def test_model_restriction(models: frozenset[str] | None, model: str, allowed: bool) -> None:
    key = ApiKey("k", models, None, None)
    assert key.allows(model) is allowed
    assert key.allows("auto")  # auto routes among the key's own models
    assert key.visible(["smol", "coder", "auto"]) == [m for m in ["smol", "coder", "auto"] if key.allows(m)]


def test_hash_key_command_prints_the_digest_of_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from gateway.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["hash-key"]) == 0
    out = capsys.readouterr()
    assert out.out == hash_key(KEY) + "\n"
    assert KEY not in out.out + out.err

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["hash-key"]) == 2
    assert "no key given" in capsys.readouterr().err
