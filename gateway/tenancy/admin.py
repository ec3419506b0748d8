"""Admin API under ``/admin`` (Litestar), guarded by an admin key (``Authorization: Bearer`` or
``x-api-key``, checked against ``tenancy.admin_key_hashes`` in constant time):

- ``POST /admin/keys`` ``{"tenant": ..., "name": ...}`` -> 201 with the new key, shown this once
- ``GET /admin/keys`` -> ids, tenant, name, source, created/last used/revoked times; never secrets
- ``DELETE /admin/keys/{id}`` -> the revoked key's record; refused on every replica within
  ``key_cache_ttl_s`` (at most one second)

Errors are OpenAI-shaped, rendered by the router itself so the routes work in any app.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, JSONBody

from gateway.errors import GatewayError, InvalidRequestError, ServiceUnavailableError
from gateway.tenancy.keyrepo import KeyRecord
from gateway.tenancy.store import STORE_ERRORS

if TYPE_CHECKING:
    from gateway.tenancy.admission import Admission


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    tenant: str
    name: str = ""


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def key_json(record: KeyRecord, last_used: float | None) -> dict[str, Any]:
    return {"object": "api_key", "id": record.key_id, "tenant": record.tenant, "name": record.name,
            "source": record.source, "created_at": _seconds(record.created or None),
            "last_used_at": _seconds(last_used), "revoked_at": _seconds(record.revoked)}


@contextmanager
def _key_store() -> Iterator[None]:
    try:
        yield
    except STORE_ERRORS as error:
        raise ServiceUnavailableError("The key store (Redis) is unavailable; retry shortly.",
                                      code="key_store_unavailable") from error


def render_gateway_error(request: Request[Any, Any, Any], error: GatewayError) -> Response[Any]:
    return Response(content=error.to_body(), status_code=error.http_status, headers=error.headers)


def admin_routes(admission: Admission) -> list[Router]:
    """The admin handlers, bound to ``admission``, as one Router to mount in the app."""

    def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        admission.check_admin(connection.headers)

    @post("/keys", status_code=201)
    async def create_key(data: JSONBody[CreateKey]) -> dict[str, Any]:
        if admission.tenant(data.tenant) is None:
            raise InvalidRequestError(f"Unknown tenant {data.tenant!r}.", param="tenant",
                                      code="unknown_tenant")
        with _key_store():
            new, record = await admission.keys.create(data.tenant, data.name)
        return {**key_json(record, None), "key": new.key}

    @get("/keys")
    async def list_keys() -> dict[str, Any]:
        with _key_store():
            records, used = await admission.keys.records()
        return {"object": "list", "data": [key_json(r, used.get(r.key_id)) for r in records]}

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(key_id: FromPath[str]) -> dict[str, Any]:
        with _key_store():
            record = await admission.keys.revoke(key_id)
        return key_json(record, None)

    return [Router(path="/admin", route_handlers=[create_key, list_keys, revoke_key], guards=[require_admin],
                   exception_handlers={GatewayError: render_gateway_error}, include_in_schema=False)]
