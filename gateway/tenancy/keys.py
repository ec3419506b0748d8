"""API key format, generation, hashing and constant-time verification.

A key reads ``gwk_<id>_<secret>``: ``id`` is 16 hex digits, public (listed by the admin API, safe in
logs), and ``secret`` is 32 random bytes in URL-safe base64. Only ``sha256:<hex>`` of the whole key
is ever stored. The secret carries 256 bits of entropy, so a fast unsalted hash is the standard
choice for tokens like these (a slow password hash guards low-entropy secrets and would cost every
request milliseconds). Comparison is constant-time, also for unknown ids.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "gwk_"
_KEY = re.compile(r"^gwk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
# Compared against when the id is unknown, so a miss costs what a hit costs.
_DUMMY_HASH = "sha256:" + "0" * 64


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str  # shown once, never stored
    key_hash: str


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, key=key, key_hash=hash_key(key))


def key_id_of(key: str) -> str | None:
    """The public id of a well-formed key, None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def verify(key: str, stored_hash: str | None) -> bool:
    """Constant-time check of ``key`` against a stored hash (None: unknown id, always False)."""
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    return hmac.compare_digest(hash_key(key), expected) and stored_hash is not None


def verify_any(key: str, stored_hashes: list[str]) -> bool:
    """Check against every hash (no early exit), for the handful of admin keys."""
    computed = hash_key(key)
    matched = False
    for stored in stored_hashes:
        matched |= hmac.compare_digest(computed, stored)
    return matched


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``x-api-key``; None when neither is set."""
    authorization = _header(headers, "authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = _header(headers, "x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    return value
