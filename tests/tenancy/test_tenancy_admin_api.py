"""The admin API over real HTTP (a Litestar app on uvicorn, loopback port): admin key required,
create shows the secret once, list never shows secrets, revoke takes effect, errors OpenAI-shaped."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar

from gateway.errors import AuthenticationError
from gateway.tenancy import Admission, admin_routes
from gateway.tenancy.keys import generate_key, hash_key

ADMIN_KEY = "admin-secret-for-tests"


@contextlib.asynccontextmanager
async def serve(admission: Admission) -> AsyncIterator[httpx.AsyncClient]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = Litestar(route_handlers=admin_routes(admission))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def admin(make_admission: Any, store_kind: str) -> AsyncIterator[tuple[Admission, httpx.AsyncClient]]:
    config_key = generate_key()
    admission = make_admission(store_kind, auth_enabled=True, admin_key_hashes=[hash_key(ADMIN_KEY)],
                               tenants=[{"name": "acme"}],
                               keys=[{"id": config_key.key_id, "hash": config_key.key_hash, "tenant": "acme",
                                      "name": "from-config"}])
    async with serve(admission) as client:
        yield admission, client


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == error_type
    return error


async def test_admin_key_is_required(admin: tuple[Admission, httpx.AsyncClient]) -> None:
    _, client = admin
    assert_openai_error(await client.get("/admin/keys"), 401, "authentication_error")
    assert_openai_error(await client.get("/admin/keys", headers={"authorization": "Bearer nope"}), 401,
                        "authentication_error")
    created = await client.post("/admin/keys", json={"tenant": "acme"}, headers={"x-api-key": "nope"})
    assert_openai_error(created, 401, "authentication_error")


async def test_create_list_revoke(admin: tuple[Admission, httpx.AsyncClient]) -> None:
    admission, client = admin
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    created = await client.post("/admin/keys", json={"tenant": "acme", "name": "ci"}, headers=auth)
    assert created.status_code == 201, created.text
    body = created.json()
    key, key_id = body["key"], body["id"]
    assert body["tenant"] == "acme" and body["name"] == "ci" and body["source"] == "admin"
    assert body["created_at"] > 0 and body["revoked_at"] is None
    assert (await admission.authenticate({"authorization": f"Bearer {key}"})).key_id == key_id

    listed = await client.get("/admin/keys", headers=auth)
    assert listed.status_code == 200
    rows = {row["id"]: row for row in listed.json()["data"]}
    assert rows[key_id]["last_used_at"] is not None and rows[key_id]["tenant"] == "acme"
    assert [r["source"] for r in rows.values()].count("config") == 1
    assert key.split("_", 2)[2] not in listed.text and "sha256" not in listed.text
    assert all("key" not in row for row in rows.values())

    revoked = await client.delete(f"/admin/keys/{key_id}", headers=auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    with pytest.raises(AuthenticationError):
        await admission.authenticate({"authorization": f"Bearer {key}"})
    listed = await client.get("/admin/keys", headers=auth)
    assert {row["id"]: row for row in listed.json()["data"]}[key_id]["revoked_at"] is not None


async def test_admin_errors_are_openai_shaped(admin: tuple[Admission, httpx.AsyncClient]) -> None:
    _, client = admin
    auth = {"x-api-key": ADMIN_KEY}
    unknown_tenant = await client.post("/admin/keys", json={"tenant": "nobody"}, headers=auth)
    error = assert_openai_error(unknown_tenant, 400, "invalid_request_error")
    assert error["param"] == "tenant"
    assert_openai_error(await client.delete("/admin/keys/0123456789abcdef", headers=auth), 404,
                        "invalid_request_error")
    listed = (await client.get("/admin/keys", headers=auth)).json()["data"]
    config_id = next(row["id"] for row in listed if row["source"] == "config")
    error = assert_openai_error(await client.delete(f"/admin/keys/{config_id}", headers=auth), 400,
                                "invalid_request_error")
    assert error["code"] == "config_key"


async def test_admin_api_is_off_without_admin_keys(make_admission: Any) -> None:
    admission = make_admission("memory", auth_enabled=True, tenants=[{"name": "acme"}])
    async with serve(admission) as client:
        response = await client.get("/admin/keys", headers={"x-api-key": ADMIN_KEY})
        assert_openai_error(response, 403, "permission_error")
