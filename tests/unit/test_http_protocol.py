"""gateway.http_protocol: an answer's head leaves in the same write as its body, a stream's head and a
HEAD answer's leave without waiting for a body, and bytes never change order. Served by real uvicorn
over a real socket; only the count of writes is read from a recorder placed under the joining layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from backends.launchers.process import free_port
from gateway.http_protocol import GatewayHttpProtocol, HeadJoiningTransport
from tests.support.uvicorn_server import RecordingTransport, serving


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/whole":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
    elif scope["path"] == "/slow-stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await asyncio.sleep(0.5)  # the head must not wait for this
        await send({"type": "http.response.body", "body": b"late", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[bytes]]]:
    writes: list[bytes] = []

    class Recorded(GatewayHttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(RecordingTransport(transport, writes))  # type: ignore[arg-type]

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=Recorded, loop="none", log_level="warning",
                            lifespan="off")
    async with serving(config):
        yield f"http://127.0.0.1:{port}", writes


async def test_head_and_body_of_an_answer_go_out_in_one_write(server: tuple[str, list[bytes]]) -> None:
    url, writes = server
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            answer = await client.post(url + "/whole", content=b"x" * 100)
            assert answer.status_code == 200 and answer.json() == {"ok": True}
    answers = [w for w in writes if w.startswith(b"HTTP/1.1 200")]
    assert len(answers) == 3 and len(writes) == 3
    assert all(w.endswith(b'\r\n\r\n{"ok":true}') for w in answers)


async def test_a_lone_head_is_not_held_back(server: tuple[str, list[bytes]]) -> None:
    url, writes = server
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient() as client:
        started = loop.time()
        async with client.stream("GET", url + "/slow-stream") as answer:
            head_after = loop.time() - started
            body = await answer.aread()
    assert answer.status_code == 200 and body == b"late"
    assert head_after < 0.4, "the head waited for the body"
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n\r\n")


async def test_expect_continue_then_answer(server: tuple[str, list[bytes]]) -> None:
    """A held ``100 Continue`` must reach the client before it sends the body it is waiting to send."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /whole HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    await writer.drain()
    final = await asyncio.wait_for(reader.readuntil(b'{"ok":true}'), 2)
    assert final.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_bad_request_answer_arrives_before_close(server: tuple[str, list[bytes]]) -> None:
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), 2)  # to the end: the server closes after answering
    writer.close()
    assert received.startswith(b"HTTP/1.1 400")


async def test_a_head_request_gets_its_head(server: tuple[str, list[bytes]]) -> None:
    """A HEAD answer has a content-length and no body write: the held head leaves when it completes."""
    url, writes = server
    async with httpx.AsyncClient() as client:
        answer = await asyncio.wait_for(client.head(url + "/whole"), 2)
        again = await asyncio.wait_for(client.post(url + "/whole"), 2)  # the connection still works
    assert answer.status_code == 200 and answer.headers["content-length"] == "11"
    assert again.json() == {"ok": True}
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n\r\n")


class _Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_order_is_kept_and_close_sends_a_held_head() -> None:
    sink = _Sink()
    joining = HeadJoiningTransport(sink)  # type: ignore[arg-type]
    joining.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    joining.write(memoryview(b"body"))
    joining.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")  # a stream's: not held
    joining.write(b"more")
    joining.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
    assert sink.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody",
                           b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"more"]
    joining.close()
    assert sink.writes[-1] == b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n" and sink.closed
