"""The gateway's upstream HTTP client against scripted raw-socket servers: framing
(chunked, Content-Length, until close), keep-alive reuse, timeouts, failures at each
stage, flow control, cancellation, and the request it writes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import pytest

from tokenfleet.route.upstream import (
    ConnectError,
    ConnectionLost,
    UpstreamClient,
    make_target,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Head and body of one request (the client always sends Content-Length)."""
    head = await r.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await r.readexactly(length)


class _Server:
    """A loopback server running ``script`` per connection; records connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed = asyncio.Event()

    async def __aenter__(self) -> str:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.closed.set()
                w.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def _run(test: Callable[[UpstreamClient], Awaitable[None]]) -> None:
    async def main() -> None:
        client = UpstreamClient()
        try:
            await test(client)
        finally:
            await client.close()

    asyncio.run(main())


def _post(client: UpstreamClient, url: str, body: bytes = b"{}", read_timeout: float = 5.0,
          deadline_s: float = 10.0):  # noqa: ANN202 - a coroutine
    return client.post(make_target(url, "/v1/chat/completions"), b"X-Test: 1\r\n", body,
                       connect_timeout=2.0, read_timeout=read_timeout,
                       deadline=time.monotonic() + deadline_s)


def test_make_target_builds_the_request_head():
    t = make_target("https://user:pa%3Ass@api.example.com/openai", "/v1/chat/completions")
    assert (t.host, t.port, t.ssl) == ("api.example.com", 443, True)
    cred = base64.b64encode(b"user:pa:ss").decode()
    assert t.head == (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\n"
                      b"Authorization: Basic " + cred.encode() + b"\r\n")
    t = make_target("http://[::1]:8000", "/v1/completions")
    assert (t.host, t.port, t.ssl) == ("::1", 8000, False)
    assert b"Host: [::1]:8000\r\n" in t.head
    with pytest.raises(ValueError):
        make_target("ftp://x", "/v1/completions")


def test_chunked_stream_then_keep_alive_reuse():
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head, body = await _read_request(r)
            server.heads.append(head + body)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: 1\n\n", b"data: 2\n\n"):
                w.write(b"%x\r\n%b\r\n" % (len(part), part))
                await w.drain()
                await asyncio.sleep(0.01)
            w.write(b"0\r\n\r\n")
            await w.drain()
        await r.read()

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            for _ in range(2):
                resp = await _post(client, url, b'{"a":1}')
                assert resp.status == 200
                got = []
                while chunk := await resp.readany():
                    got.append(chunk)
                assert b"".join(got) == b"data: 1\n\ndata: 2\n\n" and len(got) == 2
                assert resp.at_eof()
                resp.release()
            assert server.connections == 1  # the second request reused the connection
            head = server.heads[0]
            assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
            assert b"X-Test: 1\r\nContent-Length: 7\r\n\r\n{\"a\":1}" in head

    _run(test)


def test_content_length_body_and_body_until_close():
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        if server.connections == 1:
            w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!")
            await w.drain()
            await _read_request(r)  # kept alive: a second request on it
        # No length, not chunked: the body is everything until the connection closes.
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"part two")
        await w.drain()

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            resp = await _post(client, url)
            assert resp.status == 404 and await resp.read(3) == b"nop"
            assert await resp.read() == b"e!"
            resp.release()
            resp = await _post(client, url)
            assert resp.status == 200 and await resp.read() == b"part one, part two"
            resp.release()  # not reusable: closed
            assert server.connections == 1
            resp = await _post(client, url)  # a new connection
            assert await resp.read() == b"part one, part two"
            assert server.connections == 2

    _run(test)


def test_refused_connection_is_a_connect_error():
    async def test(client: UpstreamClient) -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectError) as e:
            await _post(client, f"http://127.0.0.1:{port}")
        assert isinstance(e.value.os_error, ConnectionRefusedError)

    _run(test)


def test_silence_times_out_and_the_deadline_is_kept():
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        if server.connections == 2:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
            await w.drain()
        await asyncio.sleep(5)

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):  # no headers within the read timeout
                await _post(client, url, read_timeout=0.1)
            assert time.monotonic() - t0 < 1.0
            resp = await _post(client, url, read_timeout=1.0, deadline_s=0.3)
            assert await resp.readany() == b"abcd"
            with pytest.raises(TimeoutError):  # the deadline comes first
                await resp.readany()
            assert time.monotonic() - t0 < 1.5
            resp.close()

    _run(test)


def test_connection_lost_before_headers_mid_body_and_garbage():
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        n = server.connections
        if n == 2:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        elif n == 3:
            w.write(b"this is not HTTP\r\n\r\n")
        await w.drain()
        # then the connection closes (n == 1: before any byte of the response)

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            with pytest.raises(ConnectionLost):
                await _post(client, url)
            resp = await _post(client, url)
            assert await resp.readany() == b"only this"
            with pytest.raises(ConnectionLost):
                await resp.readany()
            resp.close()
            with pytest.raises(ConnectionLost):
                await _post(client, url)

    _run(test)


def test_large_body_with_flow_control():
    size = 3 * 1024 * 1024

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, body = await _read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 65536):
            w.write(body[i:i + 65536])
            await w.drain()

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            body = bytes(range(256)) * (size // 256)  # the request body is echoed back
            resp = await _post(client, url, body)
            got = bytearray()
            while chunk := await resp.readany():
                got += chunk
                await asyncio.sleep(0)  # a reader slower than the sender
            assert bytes(got) == body
            resp.release()

    _run(test)


def test_close_drops_the_connection_so_the_backend_sees_the_cancel():
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        assert await r.read() == b""  # the client closed the connection

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            resp = await _post(client, url)
            assert await resp.readany() == b"abc"
            resp.close()
            await asyncio.wait_for(server.closed.wait(), 2.0)

    _run(test)


def test_cancelled_while_waiting_for_headers_closes_the_connection():
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        assert await r.read() == b""

    server = _Server(script)

    async def test(client: UpstreamClient) -> None:
        async with server as url:
            task = asyncio.create_task(_post(client, url))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(server.closed.wait(), 2.0)

    _run(test)
