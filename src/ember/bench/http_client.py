"""A minimal HTTP/1.1 client over asyncio streams, for the benchmark's requests: one POST per connection, read
whole or as server-sent events.

Not httpx: on the 2-core machine the client shares the cores with the engine, and httpx's streaming stack
(httpcore, anyio cancel scopes, line decoding) cost 150-200 us of CPU per streamed token against ~60 us here;
that CPU came out of the engine's and moved HTTP/engine at 8 streams from 0.95 to 0.89."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit


class HttpBenchError(RuntimeError):
    """The benchmark server did not start, or answered something the benchmark cannot measure."""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # the server closed first (Connection: close): nothing left to flush


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpBenchError(f"not an HTTP/1.x status line: {status_line!r}")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body as it arrives: chunked transfer coding, a Content-Length, or everything up to the close."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)  # the data and its trailing CRLF
            yield chunk[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        yield await reader.read()


class HttpClient:
    """POSTs JSON to one server; every request opens its own connection and asks the server to close it."""

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://host:port, got {url!r}")
        self.host, self.port, self.base_path = parts.hostname, parts.port, parts.path.rstrip("/")
        self.api_key = api_key

    def _request(self, path: str, body: dict[str, Any]) -> bytes:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {self.base_path}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + payload

    async def _send(
        self, path: str, body: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(self._request(path, body))
            status, headers = await _read_head(reader)
            if status != 200:
                error = b"".join([chunk async for chunk in _body_chunks(reader, headers)])
                raise HttpBenchError(f"POST {self.base_path}{path} answered {status}: {error[:500].decode()}")
        except BaseException:
            await _close(writer)
            raise
        return reader, writer, headers

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON reply of a non-streamed request."""
        reader, writer, headers = await self._send(path, body)
        try:
            return json.loads(b"".join([chunk async for chunk in _body_chunks(reader, headers)]))
        finally:
            await _close(writer)

    async def post_events(self, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[float, bytes]]:
        """Each server-sent event of a streamed reply as (perf_counter() when its bytes arrived, the event)."""
        reader, writer, headers = await self._send(path, body)
        try:
            pending = b""
            async for chunk in _body_chunks(reader, headers):
                arrived = time.perf_counter()
                *events, pending = (pending + chunk).split(b"\n\n")  # an event ends with a blank line
                for event in events:
                    yield arrived, event
        finally:
            await _close(writer)
