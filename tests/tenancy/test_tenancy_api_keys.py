"""API keys: format and constant-time verification, the ``keys`` CLI helper, keys hashed at rest (a
scan of every Redis key finds no secret), never logged, and revocation seen by another replica
within one second."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from gateway.errors import AuthenticationError
from gateway.tenancy import TenancyConfig, keys_command
from gateway.tenancy.keys import generate_key, hash_key, key_id_of, presented_key, verify, verify_any


def test_key_format_hash_and_verify() -> None:
    new = generate_key()
    assert new.key.startswith("gwk_") and key_id_of(new.key) == new.key_id
    assert new.key_hash == hash_key(new.key) and new.key_hash.startswith("sha256:")
    assert verify(new.key, new.key_hash)
    assert not verify(new.key, None) and not verify(new.key + "x", new.key_hash)
    assert not verify(generate_key().key, new.key_hash)
    assert key_id_of("sk-anything") is None and key_id_of(new.key + "=") is None
    assert verify_any("admin", [hash_key("other"), hash_key("admin")])
    assert not verify_any("admin", [])
    assert generate_key().key != generate_key().key


def test_presented_key_reads_bearer_then_x_api_key() -> None:
    assert presented_key({"authorization": "Bearer k1", "x-api-key": "k2"}) == "k1"
    assert presented_key({"authorization": "Basic k1", "x-api-key": "k2"}) == "k2"
    assert presented_key({"X-Api-Key": " k3 "}) == "k3"
    assert presented_key({"authorization": "Bearer "}) is None and presented_key({}) is None


def test_keys_cli_new_prints_a_config_entry_that_authenticates_and_hash_reproduces_it() -> None:
    out = io.StringIO()
    assert keys_command(["new", "--tenant", "acme", "--name", "ci"], stdout=out) == 0
    text = out.getvalue()
    key = text.splitlines()[1].removeprefix("# ")
    entry = yaml.safe_load(text)["keys"][0]
    assert entry["tenant"] == "acme" and entry["name"] == "ci" and entry["hash"] == hash_key(key)
    TenancyConfig.model_validate({"tenants": [{"name": "default"}, {"name": "acme"}], "keys": [entry]})
    hashed = io.StringIO()
    assert keys_command(["hash"], stdin=io.StringIO(key + "\n"), stdout=hashed) == 0
    assert hashed.getvalue() == f"id: {entry['id']}\nhash: {entry['hash']}\n"
    admin = io.StringIO()
    assert keys_command(["hash", "my admin key"], stdout=admin) == 0
    assert admin.getvalue().strip() == hash_key("my admin key")


def test_config_refuses_secrets_and_dangling_references() -> None:
    new = generate_key()
    with pytest.raises(ValueError):
        TenancyConfig.model_validate({"keys": [{"id": new.key_id, "hash": new.key, "tenant": "default"}]})
    with pytest.raises(ValueError):
        TenancyConfig.model_validate({"keys": [{"id": new.key_id, "hash": new.key_hash, "tenant": "nobody"}]})
    with pytest.raises(ValueError):
        TenancyConfig.model_validate({"admin_key_hashes": ["plain admin key"]})
    with pytest.raises(ValueError):
        TenancyConfig.model_validate({"tenants": [{"name": "default",
                                                   "limits": {"tokens_per_minute": 10**9}}]})


async def dump_prefix(redis: Redis, prefix: str) -> bytes:
    dumped = b""
    async for key in redis.scan_iter(match=f"{prefix}*"):
        kind: Any = await redis.type(key)
        readers: dict[bytes, Any] = {b"hash": redis.hgetall, b"set": redis.smembers, b"string": redis.get,
                                     b"zset": lambda k: redis.zrange(k, 0, -1, withscores=True)}
        dumped += key + repr(await readers[kind](key)).encode()
    return dumped


async def test_admin_created_keys_are_hashed_at_rest_and_never_logged(
        make_admission: Any, shared_redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    admission = make_admission("redis", auth_enabled=True, tenants=[{"name": "acme"}])
    with caplog.at_level(logging.DEBUG):
        new, _ = await admission.keys.create("acme", "ci")
        secret = new.key.split("_", 2)[2]
        assert (await admission.authenticate({"authorization": f"Bearer {new.key}"})).key_id == new.key_id
        errors = []
        for wrong in (new.key[:-1] + ("B" if new.key[-1] == "A" else "A"), secret, new.key + "x"):
            with pytest.raises(AuthenticationError) as caught:
                await admission.authenticate({"x-api-key": wrong})
            errors.append(str(caught.value.to_body()))
        records, used = await admission.keys.records()
        await admission.keys.revoke(new.key_id)
        with pytest.raises(AuthenticationError) as revoked:
            await admission.authenticate({"x-api-key": new.key})
        errors.append(str(revoked.value.to_body()))
    assert [r.key_id for r in records] == [new.key_id] and new.key_id in used
    stored = await dump_prefix(shared_redis, prefix)
    assert new.key_hash.encode() in stored  # the hash is what is stored ...
    assert secret.encode() not in stored and new.key.encode() not in stored  # ... never the secret
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert secret not in logged and all(secret not in e for e in errors)


async def test_revocation_reaches_another_replica_within_one_second(make_admission: Any) -> None:
    config = {"auth_enabled": True, "tenants": [{"name": "acme"}]}
    replica_a = make_admission("redis", **config)
    replica_b = make_admission("redis", **config)
    new, _ = await replica_a.keys.create("acme")
    headers = {"authorization": f"Bearer {new.key}"}
    assert (await replica_b.authenticate(headers)).tenant == "acme"  # B caches the key
    await replica_a.keys.revoke(new.key_id)
    revoked_at = time.monotonic()
    while True:
        try:
            await replica_b.authenticate(headers)
        except AuthenticationError as error:
            assert error.code == "revoked_api_key"
            break
        assert time.monotonic() - revoked_at < 1.0, "replica B still accepts a revoked key"
        await asyncio.sleep(0.02)


async def test_memory_store_keeps_admin_keys_in_process(make_admission: Any) -> None:
    admission = make_admission("memory", auth_enabled=True, tenants=[{"name": "acme"}])
    new, _ = await admission.keys.create("acme")
    assert (await admission.authenticate({"x-api-key": new.key})).key_id == new.key_id
    await admission.keys.revoke(new.key_id)
    with pytest.raises(AuthenticationError):
        await admission.authenticate({"x-api-key": new.key})


async def test_a_key_seen_before_skips_the_hash_but_not_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keystore remembers keys it verified: the next request with one does no sha256, yet a forged
    secret on the same id, a revocation and a config key's removal are all still refused."""
    from gateway.tenancy import keystore as keystore_module
    from gateway.tenancy.config import KeyConfig
    from gateway.tenancy.keyrepo import MemoryKeyRepository

    hashed: list[str] = []
    real_verify = keystore_module.verify

    def counting_verify(key: str, stored_hash: str | None) -> bool:
        hashed.append(key)
        return real_verify(key, stored_hash)

    monkeypatch.setattr(keystore_module, "verify", counting_verify)
    config_key = generate_key()
    store = keystore_module.KeyStore(
        [KeyConfig(id=config_key.key_id, hash=config_key.key_hash, tenant="acme")], MemoryKeyRepository(),
        cache_ttl_s=0.5, use_stale_on_error=False)
    admin_key, _ = await store.create("acme")

    for key in (config_key.key, admin_key.key):
        assert (await store.lookup(key)).tenant == "acme"
        assert (await store.lookup(key)).tenant == "acme"
    assert hashed == [config_key.key, admin_key.key]  # once each

    forged = admin_key.key[:-5] + ("AAAAA" if not admin_key.key.endswith("AAAAA") else "BBBBB")
    with pytest.raises(AuthenticationError):
        await store.lookup(forged)
    with pytest.raises(AuthenticationError):
        await store.lookup(forged)  # refused again: only keys that verified are remembered
    assert hashed[-2:] == [forged, forged]

    await store.revoke(admin_key.key_id)
    with pytest.raises(AuthenticationError) as revoked:
        await store.lookup(admin_key.key)
    assert revoked.value.code == "revoked_api_key"

    store.replace_config_keys([])
    with pytest.raises(AuthenticationError):
        await store.lookup(config_key.key)
