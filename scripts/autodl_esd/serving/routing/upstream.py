"""The gateway's connections to replicas: kept alive per replica address and reused, each
request written by aiohttp's StreamWriter and its answer parsed by aiohttp's C parser
(`client_proto.ResponseHandler`, the protocol aiohttp's own client runs on).

Why not `aiohttp.ClientSession`: per request it builds a ClientRequest and a ClientResponse
and runs cookie, redirect, proxy, auth and tracing machinery that a proxy never uses; that
was about 70 µs of the gateway's 170 µs of CPU per request (bench/gateway.py). Here HTTP is
still parsed and serialized by aiohttp; this module only picks, opens and returns
connections, and keeps aiohttp's client behaviour where the gateway relies on it:

- a missing body length on a method with a body is sent as `Content-Length: 0`, a streamed
  body of unknown length chunked; an answer without a length is read until the replica closes;
- 1xx interim answers (100 Continue) are skipped;
- `read_timeout` bounds every silence while waiting for or reading an answer;
- host names are resolved once per `DNS_CACHE_SECONDS`; https replicas (AutoDL's public
  service URLs) are verified against the system's CAs.

One thing it does better: a kept-alive connection the replica closed while it sat idle (the
request crossed its close) is retried once on a new connection, instead of failing the
request and ejecting a healthy replica.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

from ...core.deps import require

aiohttp = require("aiohttp")
ResponseHandler = require("aiohttp.client_proto").ResponseHandler
http = require("aiohttp.http")

# A connection idle longer than this is closed rather than reused (aiohttp's own keep-alive
# default): the replica's server may drop it at any moment after its own idle limit.
IDLE_SECONDS = 15.0
DNS_CACHE_SECONDS = 300
# Methods that carry no body unless they say so (no Content-Length: 0 added), as aiohttp's client.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# 1xx interim answers skipped before the final one; a replica sending them without end
# would otherwise hold the request (each one resets the read timeout).
MAX_INTERIM_ANSWERS = 8
# Answer bodies are handed on in pieces of at most this size (aiohttp's default).
READ_BUFFER_BYTES = 2 ** 16


class UpstreamError(aiohttp.ClientConnectionError):
    """The replica could not be reached or answered something that is not HTTP."""


class ReplicaUnreachable(UpstreamError):
    pass


class MalformedAnswer(UpstreamError):
    pass


class RequestBodyFailed(Exception):
    """Reading the client's body failed while it streamed to the replica (the client stalled
    or sent too much): the client's fault, not the replica's. `cause` is the original error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


# Connection errors that mean a kept-alive connection was already closed by the replica.
STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError)


@dataclass(frozen=True)
class Target:
    """Where a replica URL points: the address to connect to and what the request line and
    Host field carry. `key` names the connections that can be shared."""

    host: str
    port: int
    tls: bool
    base: str  # the URL's path (and query): what the request's path is appended to
    host_header: str
    family: int | None  # of an IP address written in the URL; None for a name (resolved when connecting)

    @property
    def key(self) -> tuple[str, int, bool]:
        return self.host, self.port, self.tls

    @classmethod
    def parse(cls, url: str) -> "Target":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReplicaUnreachable(f"副本地址不是 http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError as error:
            raise ReplicaUnreachable(f"副本地址的端口不对: {url!r}") from error
        base = parts.path + ("?" + parts.query if parts.query else "")
        try:
            family: int | None = socket.AF_INET6 if ipaddress.ip_address(parts.hostname).version == 6 else socket.AF_INET
        except ValueError:
            family = None
        return cls(parts.hostname, port, tls, base, parts.netloc.rpartition("@")[2], family)


class Answer:
    """A replica's answer once its status line and headers arrived; the body is `content`
    (aiohttp's StreamReader: `iter_any()`, `read()`). `release()` when done with it (the
    connection is reused if the answer was read to its end), `close()` to drop the connection."""

    __slots__ = ("status", "reason", "headers", "content", "_protocol", "_pool", "_key", "_sender")

    def __init__(self, message: Any, content: Any, protocol: Any, pool: "UpstreamPool", key: tuple,
                 sender: asyncio.Future | None) -> None:
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers = message.headers
        self.content = content
        self._protocol = protocol
        self._pool = pool
        self._key = key
        self._sender = sender

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        sender_busy = self._sender is not None and not self._sender.done()
        if sender_busy or protocol.should_close or not protocol.is_connected():
            if sender_busy:
                self._sender.cancel()
            self._pool.discard(protocol)
        else:
            self._pool.put_back(self._key, protocol)

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            if self._sender is not None:
                self._sender.cancel()
            self._pool.discard(protocol)


class UpstreamPool:
    """Kept-alive connections to replicas, no limit on how many (the gateway's own queue
    bounds concurrency). Used on one event loop."""

    def __init__(self, *, connect_timeout: float, read_timeout: float | None, max_line_size: int = 8190,
                 max_field_size: int = 8190, idle_seconds: float = IDLE_SECONDS) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple, collections.deque] = {}  # key -> (protocol, idle since), oldest first
        self._busy: set[Any] = set()
        self._targets: dict[str, Target] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(self, method: str, base_url: str, path: str, headers: Any, body: bytes = b"",
                      stream: AsyncIterator[bytes] | None = None) -> Answer:
        """Send `method base_url+path` with `headers` (a CIMultiDict this call may add Host and
        a body length to) and `body` or `stream`; return once the answer's headers arrived.
        Raises UpstreamError / aiohttp's client errors / OSError / asyncio.TimeoutError when the
        replica fails, RequestBodyFailed when the client's streamed body does."""
        target = self._target(base_url)
        headers["Host"] = target.host_header
        chunked = False
        if stream is not None:
            if "Content-Length" not in headers:
                headers["Transfer-Encoding"] = "chunked"
                chunked = True
        elif not body and method not in BODYLESS_METHODS and "Content-Length" not in headers:
            headers["Content-Length"] = "0"
        if target.base.endswith("/") and path.startswith("/"):
            path = path[1:]  # a replica URL written with a trailing slash
        line = f"{method} {target.base + path or '/'} HTTP/1.1"
        protocol, reused = await self._connection(target)
        try:
            return await self._exchange(protocol, target, method, line, headers, body, stream, chunked)
        except STALE_CONNECTION:
            if not reused or stream is not None:
                raise
        # The replica had closed the kept-alive connection: once more on a new one.
        protocol = await self._connect(target)
        return await self._exchange(protocol, target, method, line, headers, body, stream, chunked)

    def put_back(self, key: tuple, protocol: Any) -> None:
        self._busy.discard(protocol)
        self._idle.setdefault(key, collections.deque()).append((protocol, asyncio.get_running_loop().time()))

    def discard(self, protocol: Any) -> None:
        self._busy.discard(protocol)
        protocol.close()

    def sweep(self) -> None:
        """Close connections idle longer than `idle_seconds` (call now and then)."""
        limit = asyncio.get_running_loop().time() - self.idle_seconds
        for key in list(self._idle):
            stack = self._idle[key]
            while stack and (stack[0][1] < limit or not stack[0][0].is_connected()):
                stack.popleft()[0].close()
            if not stack:
                del self._idle[key]

    async def close(self) -> None:
        for stack in self._idle.values():
            for protocol, _ in stack:
                protocol.close()
        self._idle.clear()
        for protocol in list(self._busy):
            protocol.close()
        self._busy.clear()

    # ---- one exchange ---------------------------------------------------------------------

    async def _exchange(self, protocol: Any, target: Target, method: str, line: str, headers: Any, body: bytes,
                        stream: AsyncIterator[bytes] | None, chunked: bool) -> Answer:
        loop = asyncio.get_running_loop()
        sender: asyncio.Future | None = None
        try:
            protocol.set_response_params(skip_payload=method == "HEAD", read_until_eof=True, auto_decompress=False,
                                         read_timeout=self.read_timeout, read_bufsize=READ_BUFFER_BYTES,
                                         max_line_size=self.max_line_size, max_field_size=self.max_field_size)
            writer = http.StreamWriter(protocol, loop)
            if chunked:
                writer.enable_chunking()
            await writer.write_headers(line, headers)
            if stream is None:
                await writer.write_eof(body)
                protocol.start_timeout()
            else:
                sender = asyncio.ensure_future(self._send(writer, stream, protocol))
            for _ in range(MAX_INTERIM_ANSWERS + 1):
                try:
                    message, content = await protocol.read()
                except http.HttpProcessingError as error:
                    raise MalformedAnswer(f"副本的响应不是合法的 HTTP: {error.message or error}") from error
                if not 100 <= message.code < 200 or message.code == 101:
                    return Answer(message, content, protocol, self, target.key, sender)
            raise MalformedAnswer(f"副本只回了 {MAX_INTERIM_ANSWERS} 个以上的 1xx 临时响应, 没有最终响应")
        except BaseException:
            if sender is not None:
                sender.cancel()
            self.discard(protocol)
            raise

    @staticmethod
    async def _send(writer: Any, stream: AsyncIterator[bytes], protocol: Any) -> None:
        """Stream the client's body to the replica while its answer is awaited (it may answer
        early); a failure on either side fails the answer's read."""
        chunks = stream.__aiter__()
        try:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as error:  # the client stalled, sent too much or went away
                    protocol.set_exception(RequestBodyFailed(error))
                    return
                await writer.write(chunk)
            await writer.write_eof()
            protocol.start_timeout()
        except (OSError, aiohttp.ClientError) as error:  # the replica's side of the connection broke
            protocol.set_exception(error if isinstance(error, aiohttp.ClientError) else aiohttp.ClientOSError(*error.args))

    # ---- connections ----------------------------------------------------------------------

    def _target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = Target.parse(url)
            if len(self._targets) >= 10_000:  # replica URLs are few; a registry churning through many must not grow this
                self._targets.clear()
            self._targets[url] = target
        return target

    async def _connection(self, target: Target) -> tuple[Any, bool]:
        """A kept-alive connection to `target` (the most recently used: likeliest still open), or a new one."""
        stack = self._idle.get(target.key)
        if stack:
            limit = asyncio.get_running_loop().time() - self.idle_seconds
            while stack:
                protocol, since = stack.pop()
                if since >= limit and protocol.is_connected():
                    self._busy.add(protocol)
                    return protocol, True
                protocol.close()
        return await self._connect(target), False

    async def _connect(self, target: Target) -> Any:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if target.tls else None
        failure: BaseException | None = None
        for family, address in await self._resolve(target):
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: ResponseHandler(loop), address, target.port, family=family, ssl=tls,
                                           server_hostname=target.host if tls else None),
                    self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as error:
                failure = error
                continue
            self._busy.add(protocol)
            return protocol
        reason = f"{type(failure).__name__}: {failure}" if str(failure) else f"{self.connect_timeout:g} 秒内没有连上"
        raise ReplicaUnreachable(f"连不上 {target.host}:{target.port}: {reason}") from failure

    async def _resolve(self, target: Target) -> list[tuple[int, str]]:
        if target.family is not None:
            return [(target.family, target.host)]
        loop = asyncio.get_running_loop()
        cached = self._addresses.get((target.host, target.port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise ReplicaUnreachable(f"解析不了副本的主机名 {target.host}: {error}") from error
        addresses = list(dict.fromkeys((family, sockaddr[0]) for family, _, _, _, sockaddr in infos))
        if len(self._addresses) >= 10_000:
            self._addresses.clear()
        self._addresses[(target.host, target.port)] = (loop.time() + DNS_CACHE_SECONDS, addresses)
        return addresses

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
