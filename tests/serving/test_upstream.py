"""The gateway's connections to replicas (serving/routing/upstream.py): what goes on the wire,
reuse, a kept-alive connection the replica closed, https verification, idle expiry, and a
client whose streamed body breaks off. Replicas are aiohttp servers, or raw asyncio servers
where the test needs exact control of the bytes; all on loopback port 0.

tests/fixtures/tls holds a test-only CA and a certificate for localhost/127.0.0.1 signed by it
(valid until 2126); its key protects nothing."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

import requests  # noqa: E402
from aiohttp import web  # noqa: E402
from multidict import CIMultiDict  # noqa: E402

from helpers.loop_thread import item  # noqa: E402

TLS = Path(__file__).resolve().parents[1] / "fixtures" / "tls"


def pool(**overrides):
    from autodl_esd.serving.routing.upstream import UpstreamPool

    return UpstreamPool(**{"connect_timeout": 5.0, "read_timeout": 10.0, **overrides})


def fetch(loop_thread, upstream, method, base_url, path="/", body=b"", stream=None, headers=None):
    """(status, headers, body) of one exchange through `upstream`, the connection released."""

    async def exchange():
        answer = await upstream.request(method, base_url, path, CIMultiDict(headers or {}), body, stream)
        try:
            return answer.status, answer.headers, await answer.read()
        finally:
            answer.release()

    return loop_thread.run(exchange())


class RawReplica:
    """An asyncio server that answers each request head with `answer(n)` (n counts requests on
    its connection; None closes the connection without answering); `close_after` closes it
    after each answer."""

    def __init__(self, loop_thread, answer, close_after=False):
        self.connections = 0
        self.heads: list[bytes] = []
        self._answer = answer
        self._close_after = close_after
        self._writers: set = set()

        async def start():
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            loop_thread._cleanups.append(self._stop)
            return self._server.sockets[0].getsockname()[1]

        self.url = f"http://127.0.0.1:{loop_thread.run(start())}"

    async def _stop(self):
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        self._writers.add(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                reply = self._answer(served)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                served += 1
                if self._close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_kept_alive_connection_the_replica_closed_is_retried_once_on_a_new_one(loop_thread):
    # The replica answers one request per connection, then closes when the next one arrives:
    # the race of a request crossing the server's idle close.
    replica = RawReplica(loop_thread, lambda served: OK if served == 0 else None)
    upstream = pool()
    assert fetch(loop_thread, upstream, "GET", replica.url, "/a")[0] == 200
    assert fetch(loop_thread, upstream, "GET", replica.url, "/b")[0] == 200  # reused, closed, sent again
    assert replica.connections == 2 and [head.split(b" ")[1] for head in replica.heads] == [b"/a", b"/b", b"/b"]

    # Through the gateway the replica keeps its standing: no failure, no ejection.
    from autodl_esd.serving.routing.sources import StaticSource

    gateway = loop_thread.gateway(StaticSource([item("closer", replica.url)]))
    assert [requests.get(gateway.url + "/x", timeout=5).status_code for _ in range(3)] == [200, 200, 200]
    [state] = gateway.status()["replicas"]
    assert state["ejections"] == 0 and state["requests"]["success"] == 3 and state["requests"]["failure"] == 0


def test_a_replica_that_closes_a_new_connection_without_answering_fails_at_once(loop_thread):
    from autodl_esd.serving.routing.upstream import ReplicaUnreachable

    import aiohttp

    replica = RawReplica(loop_thread, lambda served: None)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        fetch(loop_thread, pool(), "GET", replica.url)
    assert replica.connections == 1  # a new connection is not retried: the replica itself failed

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(ReplicaUnreachable, match="连不上 127.0.0.1"):
        fetch(loop_thread, pool(), "GET", refused)


def test_what_goes_on_the_wire_matches_aiohttps_client(loop_thread):
    seen: list = []

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"path": request.path_qs, "host": request.headers.get("Host"), "body": body,
                     "length": request.headers.get("Content-Length"), "encoding": request.headers.get("Transfer-Encoding")})
        return web.Response(body=b"done")

    url = loop_thread.upstream(echo)
    upstream = pool()
    port = url.rsplit(":", 1)[1]
    fetch(loop_thread, upstream, "POST", url, "/no-body")  # a method with a body says its length, 0
    fetch(loop_thread, upstream, "GET", url, "/plain?q=1")  # one without says nothing

    async def pieces():
        for piece in (b"ab", b"cd", b"ef"):
            yield piece

    loop_thread.run(asyncio.sleep(0))
    fetch(loop_thread, upstream, "PUT", url, "/streamed", stream=pieces())  # unknown length: chunked
    fetch(loop_thread, upstream, "GET", url + "/base/", "/v1/models")  # a base path, a trailing slash
    fetch(loop_thread, upstream, "GET", f"http://localhost:{port}", "/named")  # a host name, resolved
    assert [entry["path"] for entry in seen] == ["/no-body", "/plain?q=1", "/streamed", "/base/v1/models", "/named"]
    assert (seen[0]["length"], seen[1]["length"]) == ("0", None)
    assert seen[2]["encoding"] == "chunked" and seen[2]["body"] == b"abcdef"
    assert seen[3]["host"] == f"127.0.0.1:{port}" and seen[4]["host"] == f"localhost:{port}"


def test_interim_answers_are_skipped_and_an_answer_without_length_is_read_until_close(loop_thread):
    replica = RawReplica(loop_thread, lambda served: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nall of it",
                         close_after=True)
    status, headers, body = fetch(loop_thread, pool(), "POST", replica.url, body=b"x", headers={"Content-Length": "1"})
    assert (status, body) == (200, b"all of it")


def test_a_replica_that_only_sends_interim_answers_is_a_malformed_answer(loop_thread):
    from autodl_esd.serving.routing.upstream import MAX_INTERIM_ANSWERS, MalformedAnswer

    endless = b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM_ANSWERS + 1) + OK
    replica = RawReplica(loop_thread, lambda served: endless)
    with pytest.raises(MalformedAnswer, match="1xx"):
        fetch(loop_thread, pool(), "GET", replica.url)
    bounded = b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM_ANSWERS + OK
    assert fetch(loop_thread, pool(), "GET", RawReplica(loop_thread, lambda served: bounded).url)[2] == b"ok"


def test_head_answers_have_no_body_and_the_connection_is_reused(loop_thread):
    replica = RawReplica(loop_thread, lambda served: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    upstream = pool()
    assert fetch(loop_thread, upstream, "HEAD", replica.url)[2] == b""
    assert fetch(loop_thread, upstream, "HEAD", replica.url)[1]["Content-Length"] == "1000"
    assert replica.connections == 1


def test_https_replicas_are_verified_against_the_systems_authorities(loop_thread, monkeypatch):
    from autodl_esd.serving.routing.upstream import ReplicaUnreachable

    async def hello(request: web.Request) -> web.StreamResponse:
        return web.Response(text="secure")

    async def start():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(TLS / "replica.pem", TLS / "replica.key")
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        loop_thread._cleanups.append(runner.cleanup)
        return runner.addresses[0][1]

    port = loop_thread.run(start())
    with pytest.raises(ReplicaUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(loop_thread, pool(), "GET", f"https://localhost:{port}")  # signed by a CA nobody trusts
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "ca.pem"))  # now the system trusts it
    assert fetch(loop_thread, pool(), "GET", f"https://localhost:{port}")[2] == b"secure"
    assert fetch(loop_thread, pool(), "GET", f"https://127.0.0.1:{port}")[2] == b"secure"


def test_connections_idle_past_their_limit_are_closed(loop_thread):
    replica = RawReplica(loop_thread, lambda served: OK)
    upstream = pool(idle_seconds=0.05)
    fetch(loop_thread, upstream, "GET", replica.url)
    fetch(loop_thread, upstream, "GET", replica.url)
    assert replica.connections == 1

    def idle_connections() -> int:
        loop_thread.call(upstream.sweep)
        return sum(len(stack) for stack in upstream._idle.values())

    from helpers.servers import wait_for

    wait_for(lambda: idle_connections() == 0, timeout=10)
    fetch(loop_thread, upstream, "GET", replica.url)
    assert replica.connections == 2  # the expired one was not reused


def test_a_client_whose_streamed_body_stalls_gets_408_and_the_replica_keeps_its_standing(loop_thread):
    from autodl_esd.serving.routing.gateway import REPLAY_LIMIT_BYTES
    from autodl_esd.serving.routing.sources import StaticSource

    bodies: list = []

    async def reader(request: web.Request) -> web.StreamResponse:
        try:
            bodies.append(len(await request.read()))
        except ConnectionError:
            bodies.append("cut")
        return web.Response(text="read")

    gateway = loop_thread.gateway(StaticSource([item("r", loop_thread.upstream(reader))]), body_idle_timeout=0.5)
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    sent = REPLAY_LIMIT_BYTES + 65536  # past the replay limit: streamed to the replica as it arrives
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {sent + 10}\r\n\r\n".encode())
        connection.sendall(b"x" * sent)  # ten bytes short, then silence
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    [state] = gateway.status()["replicas"]
    assert state["ejections"] == 0 and state["state"] == "ready", state
    assert requests.post(gateway.url + "/next", data=b"small", timeout=5).text == "read"


def test_an_ipv6_replica_address_is_reached_without_resolving(loop_thread):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def start():
        server = await asyncio.start_server(answer, "::1", 0)
        loop_thread._cleanups.append(stop(server))
        return server.sockets[0].getsockname()[1]

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv6")
        await writer.drain()
        writer.close()

    def stop(server):
        async def close():
            server.close()

        return close

    port = loop_thread.run(start())
    assert fetch(loop_thread, pool(), "GET", f"http://[::1]:{port}", "/")[2] == b"v6"


def test_load_polls_reuse_their_connection(loop_thread):
    from autodl_esd.serving.routing.sources import StaticSource

    report = b'{"running": 1, "waiting": 0}'
    replica = RawReplica(loop_thread, lambda served: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(report), report))
    from helpers.servers import wait_for

    gateway = loop_thread.gateway(StaticSource([item("r", replica.url)]), load_path="/metrics", interval=0.05)
    wait_for(lambda: len(replica.heads) >= 5, timeout=10)
    assert replica.connections == 1  # one connection, polled again and again
    assert gateway.status()["replicas"][0]["load_report"]["running"] == 1
