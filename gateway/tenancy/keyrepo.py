"""Where admin-created API keys live: Redis (shared by every replica) or this process's memory (the
single-process default, lost on restart). Records hold the key's hash, never the key.

Redis layout under the prefix: ``key:<id>`` hash (tenant, hash, name, created, revoked),
``keys`` set of ids, ``keys:last_used`` hash id -> epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    key_hash: str
    name: str = ""
    created: float = 0.0  # epoch seconds
    revoked: float | None = None
    source: str = "admin"  # "admin" (created by the admin API) or "config"


class KeyRepository(Protocol):
    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def add(self, record: KeyRecord) -> None: ...

    async def revoke(self, key_id: str, when: float) -> bool:
        """Mark revoked; False when no such key."""
        ...

    async def all(self) -> list[KeyRecord]: ...

    async def touch(self, used: dict[str, float]) -> None:
        """Record last-used times (epoch seconds) for many keys at once."""
        ...

    async def last_used(self) -> dict[str, float]: ...


class MemoryKeyRepository:
    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._last_used: dict[str, float] = {}

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def add(self, record: KeyRecord) -> None:
        self._records[record.key_id] = record

    async def revoke(self, key_id: str, when: float) -> bool:
        record = self._records.get(key_id)
        if record is None:
            return False
        if record.revoked is None:
            self._records[key_id] = replace(record, revoked=when)
        return True

    async def all(self) -> list[KeyRecord]:
        return list(self._records.values())

    async def touch(self, used: dict[str, float]) -> None:
        for key_id, when in used.items():
            self._last_used[key_id] = max(when, self._last_used.get(key_id, 0.0))

    async def last_used(self) -> dict[str, float]:
        return dict(self._last_used)


class RedisKeyRepository:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}key:{key_id}"

    async def get(self, key_id: str) -> KeyRecord | None:
        fields = await self._redis.hgetall(self._key(key_id))
        return _record(key_id, fields) if fields else None

    async def add(self, record: KeyRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(record.key_id), mapping={
                "tenant": record.tenant, "hash": record.key_hash, "name": record.name,
                "created": repr(record.created)})
            pipe.sadd(f"{self._prefix}keys", record.key_id)
            await pipe.execute()

    async def revoke(self, key_id: str, when: float) -> bool:
        key = self._key(key_id)
        if not await self._redis.exists(key):
            return False
        await self._redis.hsetnx(key, "revoked", repr(when))
        return True

    async def all(self) -> list[KeyRecord]:
        ids = sorted(_text(i) for i in await self._redis.smembers(f"{self._prefix}keys"))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._key(key_id))
            rows = await pipe.execute()
        return [_record(key_id, fields) for key_id, fields in zip(ids, rows, strict=True) if fields]

    async def touch(self, used: dict[str, float]) -> None:
        if used:
            await self._redis.hset(f"{self._prefix}keys:last_used",
                                   mapping={k: repr(v) for k, v in used.items()})

    async def last_used(self) -> dict[str, float]:
        raw = await self._redis.hgetall(f"{self._prefix}keys:last_used")
        return {_text(k): float(_text(v)) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(key_id: str, fields: dict[Any, Any]) -> KeyRecord:
    data = {_text(k): _text(v) for k, v in fields.items()}
    revoked = data.get("revoked")
    return KeyRecord(key_id=key_id, tenant=data.get("tenant", ""), key_hash=data.get("hash", ""),
                     name=data.get("name", ""), created=float(data.get("created", "0")),
                     revoked=float(revoked) if revoked else None)
