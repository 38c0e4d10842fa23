"""Client API keys: who is calling, and which models they may use.

Keys are configured as SHA-256 hex digests only (``auth.keys[].sha256``, printed by
``llm-gateway hash-key``); the gateway hashes what the client sends and looks the digest up,
so the plain key exists only in the client's request and is never stored, logged or exported.
A key is read from ``Authorization: Bearer <key>`` or, for clients that send it so,
``x-api-key: <key>``. With no keys configured authentication is off and every caller is
anonymous (``None``).

A model a key may not use answers exactly like a model that does not exist (404
``model_not_found``), as OpenAI does, so a key cannot probe which models the deployment has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import Unauthorized
from gateway.settings import AUTO_MODEL, AuthSettings


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key`` (surrounding whitespace removed), as configured in ``auth.keys[].sha256``."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller. ``models`` is ``None`` when the key may use every model."""

    name: str
    models: frozenset[str] | None
    rpm: int | None
    tpm: int | None

    def allows(self, model: str) -> bool:
        """Whether the key may name ``model``; ``auto`` is always allowed (it routes among the key's models)."""
        return self.models is None or model == AUTO_MODEL or model in self.models

    def visible(self, models: Iterable[str]) -> list[str]:
        return [m for m in models if self.allows(m)]


class KeyStore:
    """The configured keys by digest. Lookups are pure and safe from any task."""

    def __init__(self, settings: AuthSettings) -> None:
        self._by_digest = {
            k.sha256: ApiKey(k.name, frozenset(k.models) if k.models is not None else None, k.rpm, k.tpm)
            for k in settings.keys
        }

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The caller's key from request headers (case-insensitive mapping); ``None`` when auth is off.

        Raises :class:`Unauthorized` (401) when the key is missing, malformed or unknown. The
        message never repeats the key.
        """
        if not self._by_digest:
            return None
        presented = _presented_key(headers)
        if presented is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        # Comparing digests, not keys: the lookup's timing tells nothing about the configured keys.
        key = self._by_digest.get(hash_key(presented))
        if key is None:
            raise Unauthorized("Incorrect API key provided.")
        return key


def _presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthorized("Malformed Authorization header; expected 'Authorization: Bearer <key>'.")
    value = (headers.get("x-api-key") or "").strip()
    return value or None
