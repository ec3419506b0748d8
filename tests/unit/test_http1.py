"""backends/http1.py against real loopback servers: an in-process aiohttp server for well-behaved HTTP
(Content-Length and chunked bodies, streaming, keep-alive, errors, large bodies, disconnects) and raw
asyncio servers for what no proper server does (closing a reused connection without an answer, garbage,
a body cut short, a body delimited by the end of the connection)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from backends.http1 import (
    ConnectError,
    ConnectionBrokenError,
    Http1Client,
    MalformedResponseError,
    StaleConnectionError,
    encode_head,
    split_url,
)

BIG = 32 * 1024 * 1024  # more than loopback socket buffers hold, so an unread body stalls the server


@dataclass
class Server:
    """An aiohttp server recording who called, and whether a streaming client went away."""

    url: str = ""
    peers: list[object] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    client_left: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def record(request: web.Request) -> None:
        state.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        state.bodies.append(await request.read())

    async def fixed(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.Response(body=b"hello " * 1000, content_type="text/plain")

    async def chunked(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(20):
            await response.write(f"data: {i}\n\n".encode())
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        """One event, then the next only once the test says so; then keep-alive comments."""
        await record(request)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b"data: first\n\n")
            await state.release.wait()
            await response.write(b"data: second\n\n")
            for _ in range(500):
                await asyncio.sleep(0.02)
                await response.write(b":\n\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            state.client_left.set()
            raise
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        response.content_length = BIG
        await response.prepare(request)
        block = b"x" * 65536
        for _ in range(BIG // len(block)):
            await response.write(block)
            state.sent += len(block)
        await response.write_eof()
        return response

    async def status(request: web.Request) -> web.StreamResponse:
        await record(request)
        code = int(request.match_info["code"])
        return web.json_response({"error": f"status {code}"}, status=code)

    async def echo(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.json_response({"length": len(state.bodies[-1]), "method": request.method,
                                  "query": request.query_string, "host": request.host,
                                  "x-test": request.headers.get("x-test")})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/fixed", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_post("/slow", slow)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/echo", echo)
    runner, state.url = await _serve(app)
    yield state
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client()
    yield http
    await http.aclose()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a raw TCP server; the handler gets each connection and its number (0, 1, ...)."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        count = 0

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            number, count = count, count + 1
            try:
                await handler(reader, writer, number)
            finally:
                writer.close()

        srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answering(raw: bytes, then_wait_s: float = 0.0) -> Handler:
    """A raw-server handler that reads the request, writes ``raw`` as it is, and keeps the connection
    ``then_wait_s`` longer before closing it."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(then_wait_s)
    return handler


# --- bodies ----------------------------------------------------------------------------------------

async def test_content_length_body(server: Server, client: Http1Client) -> None:
    response = await client.request("GET", server.url + "/fixed")
    assert response.status == 200
    assert response.headers["content-length"] == "6000"
    assert response.headers["content-type"].startswith("text/plain")
    assert await response.read() == b"hello " * 1000
    assert response.at_eof()


async def test_chunked_body(server: Server, client: Http1Client) -> None:
    response = await client.request("GET", server.url + "/chunked")
    assert response.headers["transfer-encoding"] == "chunked"
    assert await response.read() == b"".join(f"data: {i}\n\n".encode() for i in range(20))


async def test_streamed_chunks_arrive_as_they_are_sent(server: Server, client: Http1Client) -> None:
    response = await client.request("POST", server.url + "/slow", {"content-type": "application/json"}, b"{}")
    assert await asyncio.wait_for(response.read_chunk(), 5) == b"data: first\n\n"
    assert not server.release.is_set()  # the second event does not exist yet
    server.release.set()
    assert await asyncio.wait_for(response.read_chunk(), 5) == b"data: second\n\n"
    response.close()


async def test_request_body_headers_and_query(server: Server, client: Http1Client) -> None:
    body = b"y" * (5 * 1024 * 1024 + 7)
    response = await client.request("PUT", server.url + "/echo?a=1&b=2", {"X-Test": "v"}, body)
    assert response.status == 200
    data = await response.read()
    assert b'"length": 5242887' in data and b'"method": "PUT"' in data and b'"query": "a=1&b=2"' in data
    assert b'"x-test": "v"' in data and f'"host": "{server.url[7:]}"'.encode() in data
    assert server.bodies == [body]


async def test_large_body_with_flow_control(server: Server) -> None:
    client = Http1Client(high_water=64 * 1024)
    try:
        response = await client.request("GET", server.url + "/big")
        await asyncio.sleep(0.5)  # not reading: the client stops reading the socket, the server stalls
        assert 0 < server.sent < BIG // 2
        size = 0
        while chunk := await response.read_chunk():
            assert chunk == b"x" * len(chunk)
            size += len(chunk)
        assert size == BIG == server.sent
        assert client.idle_connections(server.url) == 1
    finally:
        await client.aclose()


async def test_body_delimited_by_close(raw_server: Callable[[Handler], Awaitable[str]],
                                       client: Http1Client) -> None:
    url = await raw_server(answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"))
    response = await client.request("GET", url + "/")
    assert await response.read() == b"until the end"
    assert client.idle_connections(url) == 0


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [400, 404, 422, 500, 503])
async def test_error_statuses_keep_their_bodies_and_the_connection(server: Server, client: Http1Client,
                                                                  code: int) -> None:
    for _ in range(2):
        response = await client.request("POST", server.url + f"/status/{code}", {}, b"{}")
        assert response.status == code
        assert await response.read() == f'{{"error": "status {code}"}}'.encode()
    assert server.peers[0] == server.peers[1]


async def test_connect_refused(client: Http1Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with pytest.raises(ConnectError):
        await client.request("GET", url)


async def test_malformed_response(raw_server: Callable[[Handler], Awaitable[str]],
                                  client: Http1Client) -> None:
    url = await raw_server(answering(b"SMTP ready\r\n\r\n", then_wait_s=1))
    with pytest.raises(MalformedResponseError):
        await client.request("GET", url + "/")


async def test_body_cut_short(raw_server: Callable[[Handler], Awaitable[str]], client: Http1Client) -> None:
    url = await raw_server(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."))
    response = await client.request("GET", url + "/")
    assert await response.read_chunk() == b"only ten.."
    with pytest.raises(ConnectionBrokenError) as caught:
        await response.read_chunk()
    assert not isinstance(caught.value, StaleConnectionError)


async def test_new_connection_closed_without_an_answer_is_not_stale(
        raw_server: Callable[[Handler], Awaitable[str]], client: Http1Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    url = await raw_server(handler)
    with pytest.raises(ConnectionBrokenError) as caught:
        await client.request("POST", url + "/", {}, b"{}")
    assert not isinstance(caught.value, StaleConnectionError)


async def test_reused_connection_closed_without_an_answer_is_stale(
        raw_server: Callable[[Handler], Awaitable[str]], client: Http1Client) -> None:
    """The server answers one request, then closes the kept-alive connection when the next arrives
    (what an engine's idle timeout looks like when it races the next request)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # and close without a word

    url = await raw_server(handler)
    first = await client.request("POST", url + "/", {}, b"{}")
    assert await first.read() == b"ok"
    assert client.idle_connections(url) == 1
    with pytest.raises(StaleConnectionError):
        await client.request("POST", url + "/", {}, b"{}")
    retried = await client.request("POST", url + "/", {}, b"{}")  # the retry gets a new connection
    assert await retried.read() == b"ok"


async def test_idle_connection_closed_by_the_server_is_replaced(
        raw_server: Callable[[Handler], Awaitable[str]], client: Http1Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()  # then close: the pooled connection dies while idle

    url = await raw_server(handler)
    for _ in range(3):
        response = await client.request("GET", url + "/")
        assert await response.read() == b"ok"
        await asyncio.sleep(0.05)  # the close reaches the client
    assert client.idle_connections(url) == 0


# --- connections -----------------------------------------------------------------------------------

async def test_sequential_requests_reuse_one_connection(server: Server, client: Http1Client) -> None:
    for path in ("/fixed", "/chunked", "/fixed", "/status/404"):
        response = await client.request("GET", server.url + path)
        await response.read()
    assert len(set(server.peers)) == 1
    assert client.idle_connections(server.url) == 1


async def test_early_close_is_seen_by_the_server(server: Server, client: Http1Client) -> None:
    response = await client.request("POST", server.url + "/slow", {}, b"{}")
    assert await response.read_chunk() == b"data: first\n\n"
    server.release.set()
    response.close()
    await asyncio.wait_for(server.client_left.wait(), 5)
    assert client.idle_connections(server.url) == 0
    again = await client.request("GET", server.url + "/fixed")  # a new connection
    await again.read()
    assert server.peers[0] != server.peers[1]


async def test_unread_complete_body_still_returns_the_connection(server: Server, client: Http1Client) -> None:
    response = await client.request("GET", server.url + "/fixed")
    await asyncio.sleep(0.1)  # the whole (small) body arrives
    response.release()
    assert client.idle_connections(server.url) == 1


async def test_concurrent_requests(server: Server, client: Http1Client) -> None:
    async def one(i: int) -> bytes:
        async with await client.request("GET", server.url + ("/fixed" if i % 2 else "/chunked")) as r:
            return await r.read()

    bodies = await asyncio.gather(*(one(i) for i in range(64)))
    assert bodies.count(b"hello " * 1000) == 32
    assert 1 < client.idle_connections(server.url) <= 64
    await asyncio.gather(*(one(i) for i in range(64)))
    assert set(server.peers[64:]) <= set(server.peers[:64])  # the second round reused the pool


async def test_limit_per_origin_queues_requests(server: Server) -> None:
    client = Http1Client(limit_per_origin=2)
    try:
        async def one() -> bytes:
            async with await client.request("GET", server.url + "/fixed") as r:
                return await r.read()

        assert len(await asyncio.gather(*(one() for _ in range(20)))) == 20
        assert len(set(server.peers)) <= 2
    finally:
        await client.aclose()


async def test_idle_connections_expire(server: Server) -> None:
    client = Http1Client(idle_s=0.1)
    try:
        response = await client.request("GET", server.url + "/fixed")
        await response.read()
        assert client.idle_connections(server.url) == 1
        await asyncio.sleep(0.4)
        assert client.idle_connections(server.url) == 0
    finally:
        await client.aclose()


async def test_cancelled_request_closes_its_connection(server: Server, client: Http1Client) -> None:
    response = await client.request("POST", server.url + "/slow", {}, b"{}")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await response.read_chunk()
            await response.read_chunk()  # the second event never comes
    response.close()
    await asyncio.wait_for(server.client_left.wait(), 5)


# --- encoding ----------------------------------------------------------------------------------------

def test_split_url() -> None:
    assert split_url("http://h:81/p?q=1")[1] == "/p?q=1"
    origin, target = split_url("https://[::1]/")
    assert (origin.host, origin.port, origin.tls, origin.host_header) == ("::1", 443, True, "[::1]")
    assert target == "/"
    with pytest.raises(ValueError):
        split_url("ftp://h/")


def test_encode_head_refuses_injected_lines() -> None:
    head = encode_head("POST", "/x", "h:1", {"a": "b"}, 3)
    assert head == b"POST /x HTTP/1.1\r\nhost: h:1\r\na: b\r\ncontent-length: 3\r\n\r\n"
    with pytest.raises(ValueError):
        encode_head("GET", "/", "h", {"a": "b\r\nevil: 1"}, 0)
    with pytest.raises(ValueError):
        encode_head("GET", "/", "h", {"Content-Length": "1"}, 0)


async def test_bytes_after_a_complete_response_close_the_connection(
        raw_server: Callable[[Handler], Awaitable[str]], client: Http1Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
        await writer.drain()
        await asyncio.sleep(1)

    url = await raw_server(handler)
    response = await client.request("GET", url + "/")
    assert await response.read() == b"ok"
    assert response.headers == {"content-length": "2"}
    assert client.idle_connections(url) == 0
