"""API keys through real gateway processes: the ``llm-gateway keys`` CLI's hashes are what the config
takes; keys are hashed at rest (nothing under the Redis prefix, nor in the config file, contains a
secret) and never logged (the gateways' captured logs, at debug level, after valid and invalid keys
and the admin API); a key revoked on replica A is refused by replica B within one second."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import yaml

from gateway.tenancy.keys import generate_key, hash_key
from tests.tenancy_e2e.conftest import Fleet
from tests.tenancy_e2e.helpers import MODEL, dump_prefix, keys_cli, openai_error, shared_redis

COMPLETION = {"model": MODEL, "prompt": "Knock knock", "max_tokens": 3}


def secret_of(key: str) -> str:
    return key.split("_", 2)[2] if key.startswith("gwk_") else key


def complete(url: str, key: str, header: str = "authorization") -> httpx.Response:
    value = f"Bearer {key}" if header == "authorization" else key
    return httpx.post(url + "/v1/completions", json=COMPLETION, headers={header: value}, timeout=10)


def test_keys_hash_prints_what_the_config_accepts(fleet: Fleet) -> None:
    """acme's config entry came from ``keys hash`` with the key on stdin; given as an argument the
    command prints the same, ``check-config`` accepts the file, and both replicas take the key."""
    acme = fleet.keys["acme"]
    printed = yaml.safe_load(keys_cli("hash", acme))
    entry = next(e for e in fleet.config["tenancy"]["keys"] if e["tenant"] == "acme")
    assert printed == {"id": entry["id"], "hash": entry["hash"]}
    assert printed["hash"] == hash_key(acme) and printed["id"] in acme
    assert keys_cli("hash", "some admin secret").strip() == hash_key("some admin secret")
    command = [sys.executable, "-m", "gateway.cli", "check-config", str(fleet.config_paths[0])]
    checked = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0 and checked.stdout.startswith("ok"), checked.stderr
    for url in (fleet.a, fleet.b):
        assert complete(url, acme).status_code == 200
    admin = httpx.get(fleet.a + "/admin/keys", headers=fleet.admin, timeout=10)  # the admin key's hash too
    assert admin.status_code == 200
    assert {k["id"] for k in admin.json()["data"]} >= {e["id"] for e in fleet.config["tenancy"]["keys"]}


def test_revoked_key_is_refused_on_another_replica_within_one_second(fleet: Fleet) -> None:
    created = httpx.post(fleet.a + "/admin/keys", json={"tenant": "acme", "name": "rotating"},
                         headers=fleet.admin, timeout=10)
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    assert complete(fleet.b, key).status_code == 200  # B has now looked the key up (and caches it)
    assert complete(fleet.b, key, "x-api-key").status_code == 200
    revoked = httpx.delete(f"{fleet.a}/admin/keys/{key_id}", headers=fleet.admin, timeout=10)
    revoked_at = time.monotonic()
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    outcomes: list[tuple[float, int, str]] = []  # (sent after revocation, status, code)
    while time.monotonic() - revoked_at < 1.3:
        sent = time.monotonic() - revoked_at
        response = complete(fleet.b, key)
        code = response.json()["error"]["code"] if response.status_code != 200 else ""
        outcomes.append((sent, response.status_code, code))
        time.sleep(0.02)
    refused = [sent for sent, status, code in outcomes if status == 401 and code == "revoked_api_key"]
    assert refused, f"B never refused the revoked key: {outcomes[-3:]}"
    print(f"\nrevocation reached replica B after {refused[0]:.3f} s")
    assert refused[0] <= 1.0
    assert all(status == 401 for sent, status, _ in outcomes if sent >= refused[0]), "accepted again"
    assert all(status in (200, 401) for _, status, _ in outcomes)
    assert openai_error(complete(fleet.a, key, "x-api-key"), 401, "authentication_error")["code"] == \
        "revoked_api_key"


def test_secrets_are_hashed_at_rest_and_never_logged(fleet: Fleet) -> None:
    """Every kind of key goes through both replicas (config keys, an admin-created key that is then
    revoked, forged and foreign keys, right and wrong admin keys); afterwards no secret is found in
    Redis under the fleet's prefix, in the config files, or in either gateway's log."""
    secret_keys = [fleet.admin_key, *fleet.keys.values()]
    for key in fleet.keys.values():  # authenticated ("tight" may be over its limit by now)
        assert complete(fleet.a, key).status_code in (200, 429)
        assert complete(fleet.b, key, "x-api-key").status_code in (200, 429)
    created = httpx.post(fleet.b + "/admin/keys", json={"tenant": "metered", "name": "ci"},
                         headers={"x-api-key": fleet.admin_key}, timeout=10).json()
    secret_keys.append(created["key"])
    assert complete(fleet.a, created["key"]).status_code == 200
    listing = httpx.get(fleet.a + "/admin/keys", headers=fleet.admin, timeout=10)
    assert listing.status_code == 200 and created["id"] in listing.text
    forged = created["key"][:-3] + ("xyz" if not created["key"].endswith("xyz") else "abc")
    wrong = [forged, generate_key().key, "sk-" + "q" * 40, "wrong-admin-" + "z" * 20]
    secret_keys += wrong
    for key in wrong:
        assert complete(fleet.a, key).status_code == 401
        assert complete(fleet.b, key, "x-api-key").status_code == 401
        assert httpx.get(fleet.a + "/admin/keys", headers={"x-api-key": key}, timeout=10).status_code == 401
    assert httpx.delete(f"{fleet.b}/admin/keys/{created['id']}", headers=fleet.admin,
                        timeout=10).status_code == 200
    assert complete(fleet.b, created["key"]).status_code == 401
    assert all(secret_of(s) not in listing.text for s in secret_keys)  # listed without its secret

    client = shared_redis()
    try:
        stored = dump_prefix(client, fleet.prefix)
    finally:
        client.close()
    assert hash_key(created["key"]).encode() in stored  # the admin-created key is kept as its hash ...
    config_text = "".join(path.read_text() for path in fleet.config_paths)
    assert hash_key(fleet.keys["acme"]) in config_text and hash_key(fleet.admin_key) in config_text
    logs = "".join(g.log_path.read_text(errors="replace") for g in fleet.gateways if g.log_path)
    assert "Application startup complete" in logs  # the captured logs are the gateways' own
    for secret in secret_keys:  # ... and no secret is anywhere: not at rest, not in config, not in logs
        for where, text in (("redis", stored.decode(errors="replace")), ("config", config_text),
                            ("logs", logs)):
            assert secret_of(secret) not in text, f"a secret is in the {where}"
