"""The gateway's client for requests to backends: HTTP/1.1 over pooled keep-alive
connections, responses parsed by ``httptools`` (llhttp, the parser Node.js and uvicorn
use).

Why not ``aiohttp.ClientSession``: on the gateway's hot path it was the largest single
cost. Each ``post`` builds a URL, a header multidict, a timer context, a request and a
response object, and on Python < 3.12 writes the body from a *new task*, so the request
leaves the gateway one event-loop iteration after the handler asked for it (with every
other ready callback of the gateway in between). Here a request is one pre-serialised
``transport.write`` made by the handler itself, and a response is a list of body
chunks filled by parser callbacks: per request about a third of the gateway's CPU time
and, under load, several hundred microseconds of latency less (benchmarks/RESULTS.md,
"Gateway overhead"). The client does only what the gateway needs: POST with a body,
status and body of the answer, timeouts, cancellation by closing the connection.

Errors: :class:`ConnectError` (cannot connect: refused, unreachable, DNS),
:class:`ConnectTimeout`, :class:`ConnectionLost` (closed, reset or unparsable before
the response was complete); waiting longer than the read timeout or past the deadline
raises the built-in :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import httptools
from yarl import URL

# Body bytes buffered from one backend before it is asked to wait (flow control): a
# client that reads slowly must not make the gateway hold a whole response in memory.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """A backend connection failed (other than by a timeout)."""


class ConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, name not resolved)."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectTimeout(UpstreamError):
    """Connecting took longer than the connect timeout."""


class ConnectionLost(UpstreamError):
    """The connection closed, reset or sent something unparsable before the response
    was complete."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one backend endpoint is, parsed once: host, port, TLS, and the request
    head up to the per-request headers (so a request only appends to bytes)."""

    host: str
    port: int
    ssl: bool
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: ...\r\n" (+ Authorization from the URL)

    @property
    def key(self) -> tuple[str, int, bool]:
        return (self.host, self.port, self.ssl)


def make_target(base_url: str, path: str) -> Target:
    """The :class:`Target` for ``POST base_url + path``. Credentials in the URL
    (``http://user:pass@host``) become an ``Authorization: Basic`` header, as
    aiohttp does."""
    url = URL(base_url + path)
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError(f"backend URL must be http(s)://host[:port][/prefix]: {base_url}")
    tls = url.scheme == "https"
    host = url.raw_host
    port = url.port or (443 if tls else 80)
    host_header = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        host_header += f":{port}"
    head = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: {host_header}\r\n"
    if url.user is not None:
        cred = f"{url.user}:{url.password or ''}".encode()
        head += f"Authorization: Basic {base64.b64encode(cred).decode()}\r\n"
    return Target(host, port, tls, head.encode("latin-1"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a backend, carrying one request at a time."""

    def __init__(self, client: UpstreamClient, key: tuple[str, int, bool]) -> None:
        self.client = client
        self.key = key
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.closed = False
        self.in_use = False
        self.reset()
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    def reset(self) -> None:
        """Per-response state (a reused connection starts a new response)."""
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.read_paused = False
        self.until_eof = True  # body ends at connection close (no length, not chunked)

    # ---- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionLost(f"invalid HTTP response from the backend: {e}"))
            self.close()
            return
        if self.size > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        if (self.headers_done and not self.complete and self.until_eof and exc is None
                and self.error is None):
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        if not self.complete:
            why = f"{type(exc).__name__}: {exc}" if exc else "closed by the backend"
            self._fail(ConnectionLost(f"connection lost ({why})"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionLost("connection lost while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ---- httptools callbacks -------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only to know whether the body ends at connection close (llhttp's own
        # end-of-body for that case needs a finish call httptools does not offer).
        n = name.lower()
        if n == b"content-length" or (n == b"transfer-encoding"
                                      and b"chunked" in value.lower()):
            self.until_eof = False

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx (e.g. 100 Continue): a final response follows
            self.until_eof = True
            return
        self.status = status
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if not self.headers_done:
            return  # body of a 1xx response (there is none in practice)
        self.chunks.append(body)
        self.size += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of a 1xx response
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # ---- used by UpstreamClient / UpstreamResponse ---------------------------------

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(e)

    async def wait(self, read_timeout: float, deadline: float) -> None:
        """Until the parser reports progress, or TimeoutError after ``read_timeout`` s
        without any or at the monotonic ``deadline``, whichever is first."""
        if self.error is not None:
            raise self.error
        delay = min(read_timeout, deadline - time.monotonic())
        if delay <= 0:
            raise TimeoutError
        w = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(delay, _expire, w)
        try:
            await w
        finally:
            timer.cancel()
            self.waiter = None

    async def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self._write_paused:  # a large body: wait until the kernel took it
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def take(self, limit: int = -1) -> bytes:
        """Buffered body bytes (at most ``limit``), removed from the buffer."""
        chunks = self.chunks
        if limit < 0 or self.size <= limit:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        else:
            data = b"".join(chunks)
            chunks.clear()
            chunks.append(data[limit:])
            data = data[:limit]
        self.size -= len(data)
        if self.read_paused and self.size < _LOW_WATER and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        if not self.complete:  # anyone still reading gets an error, not a short body
            self._fail(ConnectionLost("connection closed by the gateway"))
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.client._forget(self)


def _expire(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_exception(TimeoutError())


class UpstreamResponse:
    """Status and body of one backend response. End it with :meth:`release` (the
    connection may be reused when the whole response was read) or :meth:`close`
    (drops the connection, which is how an upstream request is cancelled)."""

    __slots__ = ("_conn", "status", "_read_timeout", "_deadline")

    def __init__(self, conn: _Connection, read_timeout: float, deadline: float) -> None:
        self._conn = conn
        self.status = conn.status
        self._read_timeout = read_timeout
        self._deadline = deadline

    def at_eof(self) -> bool:
        c = self._conn
        return c.complete and not c.chunks

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last read (waiting for some); b""
        at the end of the body."""
        c = self._conn
        while not c.chunks:
            if c.complete:
                return b""
            await c.wait(self._read_timeout, self._deadline)
        return c.take()

    async def read(self, limit: int = -1) -> bytes:
        """The rest of the body, or its next ``limit`` bytes when ``limit`` >= 0."""
        c = self._conn
        while not c.complete and (limit < 0 or c.size < limit):
            await c.wait(self._read_timeout, self._deadline)
        return c.take(limit)

    def release(self) -> None:
        c = self._conn
        if c.complete and c.keep_alive and not c.chunks and c.error is None:
            self._conn.client._put_back(c)
        else:
            c.close()

    def close(self) -> None:
        self._conn.close()


class UpstreamClient:
    """Pooled keep-alive connections per (host, port, TLS); no limit on their number
    (the router enforces each backend's concurrency limit)."""

    def __init__(self, keepalive_s: float = 30.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, target: Target, headers: bytes, body: bytes, *,
                   connect_timeout: float, read_timeout: float, deadline: float
                   ) -> UpstreamResponse:
        """Send ``POST`` with ``headers`` (complete ``Name: value\\r\\n`` lines, no
        Content-Length) and ``body``; return once the response status is in. Any
        failure closes the connection it used."""
        if self._closed:
            raise ConnectionLost("client closed")
        conn = self._take_idle(target.key)
        if conn is None:
            conn = await self._connect(target, connect_timeout, deadline)
        conn.reset()
        conn.in_use = True
        try:
            await conn.send(b"%b%bContent-Length: %d\r\n\r\n%b"
                            % (target.head, headers, len(body), body))
            while not conn.headers_done:
                await conn.wait(read_timeout, deadline)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, read_timeout, deadline)

    def _take_idle(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: least likely closed by the peer
            if conn.closed or time.monotonic() - conn.idle_since > self.keepalive_s:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, target: Target, timeout: float, deadline: float
                       ) -> _Connection:
        timeout = min(timeout, deadline - time.monotonic())
        ssl_ctx: Any = None
        if target.ssl:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_ctx = self._ssl
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: _Connection(self, target.key), target.host, target.port,
                ssl=ssl_ctx), timeout)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before 3.11
            raise ConnectTimeout(f"connect timeout after {timeout:g} s") from None
        except OSError as e:
            raise ConnectError(e.strerror or str(e), e) from None
        self._all.add(conn)
        return conn

    def _put_back(self, conn: _Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        conn.in_use = False
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (idle or in use)."""
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
