"""The sans-IO half of ``backends.http1``: its errors, origins and URLs, and the request head encoding
(request line, ``Host``, the caller's headers checked against header injection, ``Content-Length``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Http1Error(Exception):
    """Base of this client's errors."""


class ConnectError(Http1Error):
    """The connection could not be opened (refused, unreachable, unknown host, TLS, connect timeout)."""


class ConnectionBrokenError(Http1Error):
    """The connection closed or failed before the response was complete."""


class StaleConnectionError(ConnectionBrokenError):
    """A reused pooled connection closed before any byte of the answer: the server did not process
    the request, which may be sent again on a new connection."""


class MalformedResponseError(Http1Error):
    """The server's bytes are not a valid HTTP/1.x response."""


class Origin(NamedTuple):
    """Where connections go; connections are pooled per origin."""

    host: str
    port: int
    tls: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an ``http://`` or ``https://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    origin = Origin(parts.hostname, parts.port or (443 if tls else 80), tls)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return origin, target


def encode_head(method: str, target: str, host: str, headers: Mapping[str, str], body_length: int) -> bytes:
    """Request line and headers; ``Host`` and ``Content-Length`` are the client's own."""
    return head_start(method, target, host, headers) + head_end(method, body_length)


def head_start(method: str, target: str, host: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n", f"host: {host}\r\n"]
    for name, value in headers.items():
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the client")
        lines.append(f"{name}: {value}\r\n")
    text = "".join(lines)
    # One count instead of a check per value: any CR or LF beyond the line ends means injected lines.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("CR or LF in the request line or a header")
    return text.encode("latin-1")


def head_end(method: str, body_length: int) -> bytes:
    if body_length or method in _BODY_METHODS:
        return b"content-length: %d\r\n\r\n" % body_length
    return b"\r\n"
