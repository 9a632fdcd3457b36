"""The serving gateway: one stable HTTP endpoint in front of a deployment's replicas (or of
several deployments, one `routes.Route` each, picked by the request's JSON `model` or a path
prefix).

Runs beside the client (a sidecar), as AutoDL's guide recommends client-side discovery: any
client (OpenAI SDK, curl, a Java app) talks to one URL; the gateway picks a replica per
request, streams bodies both ways, retries on another replica, and queues when every replica
is busy. Built on aiohttp (the standard library's threaded server cannot reach the latency
and concurrency targets; see bench/gateway.py), imported only here and in upstream.py (the
connections to replicas, on aiohttp's parser and writer without ClientSession).

The seams, so the autoscaler, a Redis registry and shared counts plug in without edits here:

- Replicas come from a `sources.ReplicaSource` (in-process watcher, registry file, registry
  URL, Redis), one per route. The gateway reads `current()` on every tick
  (`REGISTRY_TICK_SECONDS`) and never blocks on it.
- The choice is a `policies.Policy` (`select_replica` + start/finish/load-report hooks);
  cache_aware also gets the request's affinity key (llm_request.py).
- Counts, ejection and the request queue live in `replicas.ReplicaTable`; in-flight counts
  shared across gateways go through its `ledgers.InflightLedger` (pass `ledger=`).
- `Gateway.load()` is the autoscaler's input: in-flight, queued, reported running/waiting,
  replicas by state, registry staleness. `Gateway.add_extension(ext[, route])` runs a
  `GatewayExtension` (e.g. a route's autoscaler) on the gateway's loop: `start(gateway or route)`/`stop()`
  coroutines, `status()` shown under `extensions.<name>` in /_gateway/status, and
  `collect()` yielding extra prometheus_client metric families for /_gateway/metrics.

HTTP surface: every path is proxied except `/_gateway/status` (JSON) and `/_gateway/metrics`
(Prometheus text, OpenTelemetry-style names: `http_server_request_duration_seconds`,
`http_server_active_requests`, `gateway_*`, and `gen_ai_server_*` for streamed answers; see
metrics.py), and, with model routes, `GET /v1/models` (the routes' models). Errors the gateway itself answers use the
project's error shape: {"status": "error", "error_type", "message", "hint", "details"}.

What the counters count (status `totals` and the exit summary; see `routes.Totals`; with
routes, each route's `totals` count its own requests the same way): `requests` are
requests for the replicas (every path outside /_gateway/), each once however many attempts;
the gateway's own endpoints are `gateway_endpoint_requests`. Once nothing is in flight,
requests = sent_to_replicas + answered_by_gateway = the sum of by_status_class, and the
replicas' per-outcome counts (`replicas[]` plus `departed_replicas[]`) add up to
sent_to_replicas + retries. The Prometheus series keep OpenTelemetry's meaning (every HTTP
request, scrapes included: the guard's idle check relies on that, see idle.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ...core.deps import require
from ...core.errors import ErrorType, error_document
from ...core.loopback import host_header_allowed, is_loopback_name
from .llm_request import SESSION_HEADER, LlmRequest, affinity_key, parse_body
from .load_report import LoadReportError, parse_load_report
from .metrics import GatewayMetrics
from .policies import POLICIES
from .replicas import NoReplicas, Overloaded, Ticket
from .routes import DEFAULT_ROUTE, Route, RouteMap, RouteOptions, Totals
from .sources import ReplicaSource
from .stream_timing import SseClock
from .upstream import Answer, RequestBodyFailed, UpstreamPool

# aiohttp loads with this module (serve.py, tests and benches import it to run a gateway): a
# missing one is the usual dependency_missing answer with the install command, not a traceback.
aiohttp = require("aiohttp")
web = require("aiohttp.web")
RequestHandler = require("aiohttp.web_protocol").RequestHandler
CIMultiDict = require("multidict").CIMultiDict
# What reading a replica's answer raises when the replica died or stalled mid-answer.
BROKEN_ANSWER = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, asyncio.TimeoutError)

STATUS_PATH = "/_gateway/status"
METRICS_PATH = "/_gateway/metrics"
GATEWAY_PREFIX = "/_gateway/"
# With model routes the gateway answers the OpenAI model list itself (the routes' models).
MODELS_PATH = "/v1/models"

# How often the loop looks at the source for a new registry: reading it is an attribute
# access, so 0.1 s costs nothing and keeps a replaced replica out within 0.1 s of its removal.
REGISTRY_TICK_SECONDS = 0.1
# Request bodies up to this size are kept so a failed attempt can be replayed on another
# replica; larger ones stream straight through and are not retried (they may be uploads).
REPLAY_LIMIT_BYTES = 1024 * 1024
# Largest request body accepted at all (413 above): generous for prompts and images, and a
# bound on what a hostile Content-Length can make the gateway stream or hold.
MAX_REQUEST_BODY_BYTES = 256 * 1024 * 1024
# A request routed by its JSON `model` is read whole to find it, up to this size (a long
# chat with a few base64 images); a larger one needs a path-prefix route (413 says so).
MODEL_BODY_LIMIT_BYTES = 32 * 1024 * 1024
# Bodies above this are parsed on a worker thread: json.loads of a few MiB would hold the
# event loop (every other request) for milliseconds.
PARSE_ON_LOOP_BYTES = 256 * 1024
# A client that stops sending its body for this long is holding a slot for nothing (408).
BODY_IDLE_TIMEOUT_SECONDS = 30.0
# Idle keep-alive connections (and ones that never finish their request line or headers)
# are closed after this long; nginx's keepalive_timeout is 75 s, a sidecar needs less.
IDLE_CONNECTION_SECONDS = 60.0
# Answers of known length up to this size are read whole and sent in one write; larger or
# unknown-length ones (SSE, chunked) stream chunk by chunk as the replica writes them.
SMALL_BODY_BYTES = 64 * 1024
# Distinct Host header values whose verdict is remembered (clients send one or two).
HOST_VERDICT_CACHE = 64
# Connecting to a replica on a private network takes milliseconds; 5 s means it is gone.
CONNECT_TIMEOUT_SECONDS = 5.0
# Request line and each header field (aiohttp's defaults, like nginx's 8 KB buffers); longer
# ones get 400/431 before any replica is involved.
# After an early answer (413, 408) aiohttp keeps reading the unread body so the client can
# see the answer before the connection closes; a stalled client must not hold it for long.
LINGER_SECONDS = 1.0
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
# A load poll that takes longer than this is a replica too busy to report; its last report
# is kept (aged) and the poll is not stacked behind itself.
LOAD_POLL_TIMEOUT_SECONDS = 2.0
HEALTH_PROBE_TIMEOUT_SECONDS = 2.0
# A load report or health answer is read up to this size (vLLM's /metrics is tens of KiB).
LOAD_REPORT_MAX_BYTES = 2 * 1024 * 1024
# A load report older than this many poll intervals no longer describes the replica's queue.
REPORT_MAX_AGE_INTERVALS = 3
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})
# RFC 9110 7.6.1: connection-specific headers are not forwarded (plus what Connection names).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-connection"})


@dataclass
class GatewayOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    policy: str = "least_inflight"
    health_path: str | None = None
    load_path: str | None = None
    interval: float = 1.0
    retries: int = 2
    upstream_timeout: float = 300.0
    max_inflight_per_replica: int = 0
    max_queue: int = 256
    queue_timeout: float = 30.0
    drain_seconds: float = 30.0
    eject_seconds: float = 10.0
    auth_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    never_forward: tuple[str, ...] = ()  # secrets (the AutoDL token) no header may carry out
    idle_timeout: float = IDLE_CONNECTION_SECONDS
    body_idle_timeout: float = BODY_IDLE_TIMEOUT_SECONDS
    deployment_uuid: str | None = None
    seed: int | None = None
    balance_factor: float | None = None  # cache_aware's bounded-load factor (None: the policy's default)

    def route_options(self, **overrides: Any) -> RouteOptions:
        """A route's options from the gateway's (a routes file may override some per route)."""
        options = RouteOptions(
            policy=self.policy, max_inflight_per_replica=self.max_inflight_per_replica, max_queue=self.max_queue,
            queue_timeout=self.queue_timeout, eject_seconds=self.eject_seconds, probe_before_readmit=bool(self.health_path),
            report_max_age=REPORT_MAX_AGE_INTERVALS * self.interval, deployment_uuid=self.deployment_uuid,
            balance_factor=self.balance_factor)
        for key, value in overrides.items():
            setattr(options, key, value)
        return options


class GatewayExtension:
    """Runs inside the gateway (e.g. the autoscaler). Override what you need."""

    name = "extension"

    async def start(self, gateway: "Gateway") -> None:
        pass

    async def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}

    def collect(self) -> Iterable[Any]:
        """Extra prometheus_client metric families (e.g. GaugeMetricFamily) for /_gateway/metrics."""
        return ()


def end_to_end(headers: Any, *also: str) -> CIMultiDict:
    """A copy of `headers` without the hop-by-hop fields, those the Connection field names,
    and `also` (copied whole in C and pruned by name: cheaper than filtering each field)."""
    copy = CIMultiDict(headers)
    named = [token.strip() for token in headers.get("Connection", "").split(",")] if "Connection" in headers else ()
    for name in (*HOP_BY_HOP, *named, *also):
        if name:
            copy.popall(name, None)
    return copy


def json_response(status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, text=json.dumps(document, ensure_ascii=False, allow_nan=False),
                            content_type="application/json", charset="utf-8", headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_response(status: int, error_type: ErrorType, message: str, hint: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, error_document(error_type, message, hint, {"http_status": status, **(details or {})}), headers)


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp answers malformed requests (bad request line, huge headers, bad Content-Length)
    itself; this makes those answers the project's JSON error shape instead of text/HTML."""

    def handle_error(self, request, status=500, exc=None, message=None):  # type: ignore[override]
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if status >= 500:  # a bug of ours: keep its traceback on stderr (never on stdout)
            self.log_exception("gateway error handling %s %s", request.method, request.path, exc_info=exc)
        kind = ErrorType.BAD_REQUEST if 400 <= status < 500 else ErrorType.INTERNAL_ERROR
        response = error_response(status, kind, "请求格式不正确, 网关无法解析。" if kind is ErrorType.BAD_REQUEST else "网关内部错误。",
                                  "检查请求行、请求头大小 (单个不超过 8 KB) 与 Content-Length。", {"reason": message or ""})
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class Gateway:
    """One deployment (`source`), or several (`routes`, built by the caller: see routes.py)."""

    def __init__(self, source: ReplicaSource | None, options: GatewayOptions, *, ledger: Any = None,
                 routes: Sequence[Route] | None = None, log: Callable[[str], None] | None = None,
                 access_log: Callable[[str], None] | None = None) -> None:
        if options.policy not in POLICIES:
            raise ValueError(f"unknown policy {options.policy!r}")
        self.options = options
        self.log = log or (lambda message: None)
        self.access_log = access_log
        if routes is None:  # one deployment: every request goes to its route
            if source is None:
                raise ValueError("a gateway needs a source or routes")
            routes = [Route(DEFAULT_ROUTE, source, options.route_options(), ledger=ledger,
                            rng=random.Random(options.seed), log=self.log)]
            self.router: RouteMap | None = None
        else:
            if not routes or source is not None or ledger is not None:
                raise ValueError("routes bring their own sources and ledgers")
            self.router = RouteMap(routes)
        self.routes: dict[str, Route] = {route.name: route for route in routes}
        self.default_route = None if self.router else routes[0]
        self.extensions: list[GatewayExtension] = []  # gateway-wide ones; a route's are route.extensions
        self.totals = Totals()
        self.active_requests = 0  # requests for the replicas in flight (the gateway's own endpoints not counted)
        self.http_active_requests = 0  # every HTTP request in flight (Prometheus http_server_active_requests)
        self.url = ""
        self.started_at = time.time()
        # Set when an in-process watch ended with its deployment (deployment_stopped / _gone).
        self.ended_by: str | None = None
        self.stop_event: asyncio.Event | None = None
        self._never_forward = tuple(secret for secret in options.never_forward if secret)
        self._auth = ("Bearer " + options.auth_token).encode() if options.auth_token else None
        self._check_host = bool(options.allowed_hosts) or is_loopback_name(options.host)
        self._allowed_hosts = frozenset(h.lower().strip("[]") for h in options.allowed_hosts)
        self._host_verdicts: dict[str | None, bool] = {}
        self._upstream: UpstreamPool | None = None
        self._runner: web.BaseRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task] = []
        self._polling: set[str] = set()
        self._probing: set[str] = set()
        self._background: set[asyncio.Task] = set()  # load polls and health probes in flight
        self._idle: asyncio.Event | None = None  # created on the loop in start()
        self._metrics = None

    # What a one-deployment gateway always had, kept for its callers (tests, benches, the autoscaler).

    @property
    def table(self):
        return self._single().table

    @property
    def source(self) -> ReplicaSource:
        return self._single().source

    @property
    def policy(self):
        return self._single().policy

    @property
    def report_max_age(self) -> float:
        return self._single().report_max_age

    def _single(self) -> Route:
        if self.default_route is None:
            raise AttributeError("a gateway with routes has a table, source and policy per route (gateway.routes)")
        return self.default_route

    # ---- lifecycle -----------------------------------------------------------------------

    def add_extension(self, extension: GatewayExtension, route: str | None = None) -> None:
        """A gateway-wide extension, or one of a route (e.g. its autoscaler): started with the route."""
        if route is None and self.default_route is None:
            self.extensions.append(extension)
        else:
            self.routes[route or DEFAULT_ROUTE].add_extension(extension)

    async def start(self) -> str:
        """Bind and serve; returns the URL. Binding errors (OSError) propagate."""
        self._metrics = GatewayMetrics(self)
        self._idle = asyncio.Event()
        self._idle.set()
        self._upstream = UpstreamPool(connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=self.options.upstream_timeout,
                                      max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES)
        self._refresh_registry()
        server = _JsonErrorServer(self._handle, keepalive_timeout=self.options.idle_timeout, access_log=None,
                                  max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES, auto_decompress=False,
                                  lingering_time=LINGER_SECONDS)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        # backlog: the many short connections of a benchmark or a burst must not be refused.
        self._site = web.TCPSite(self._runner, self.options.host, self.options.port, backlog=1024, reuse_address=True)
        try:
            await self._site.start()
        except BaseException:
            await self._close_resources()
            raise
        sockets = self._runner.addresses
        bound_host, bound_port = sockets[0][:2]
        self.url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
        self._tasks = [asyncio.create_task(self._registry_loop(), name="gateway-registry"),
                       asyncio.create_task(self._upkeep_loop(), name="gateway-upkeep")]
        for extension in self.extensions:
            await extension.start(self)
        for route in self.routes.values():
            for extension in route.extensions:
                await extension.start(route)
        return self.url

    async def drain(self, seconds: float | None = None) -> bool:
        """Stop accepting, wait up to `seconds` for in-flight requests; True when all finished."""
        seconds = self.options.drain_seconds if seconds is None else seconds
        if self._site is not None:
            await self._site.stop()  # closes the listening socket: new connections are refused
            self._site = None
        for route in self.routes.values():
            for waiter in list(route.table._waiters):  # queued requests get their 503 now
                if not waiter.future.done():
                    waiter.future.set_exception(Overloaded("网关正在关闭"))
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        for extension in self.all_extensions():
            try:
                await extension.stop()
            except Exception as error:  # one extension's bug must not keep the gateway up
                self.log(f"扩展 {extension.name} 停止出错: {error}")
        pending = [*self._tasks, *self._background]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []
        await self._close_resources()

    async def _close_resources(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    # ---- background ----------------------------------------------------------------------

    def all_extensions(self) -> list[GatewayExtension]:
        return [*self.extensions, *(extension for route in self.routes.values() for extension in route.extensions)]

    def _refresh_registry(self) -> None:
        for route in self.routes.values():
            if route.refresh_registry():
                self._deployment_ended(route)

    def _deployment_ended(self, route: Route) -> None:
        view = route.view
        if not route.source.ends_with_deployment:
            self.log(f"注册表说部署已结束 ({view.ended}): {view.ended_reason} 请求将返回 503 no_replicas")
            return
        if self.router is not None and any(other.ended_by is None for other in self.routes.values()):
            self.log(f"路由 {route.name}: {view.ended_reason} 这个路由的请求返回 503 no_replicas, 其他路由继续服务")
            return
        self.ended_by = view.ended
        self.log(f"{view.ended_reason} 网关随之停止 (stopped_by {view.ended})")
        if self.stop_event is not None:
            self.stop_event.set()

    async def _registry_loop(self) -> None:
        while True:
            await asyncio.sleep(REGISTRY_TICK_SECONDS)
            try:
                self._refresh_registry()
                for route in self.routes.values():
                    route.table.sync_remote()  # other gateways' counts, for status and the autoscaler too
                    route.table.dispatch()  # an ejection that ended may free a queued request
            except Exception as error:  # a bad registry item must not stop the refreshes
                self.log(f"读取注册表出错, 保留当前副本: {type(error).__name__}: {error}")

    async def _upkeep_loop(self) -> None:
        while True:
            for route in self.routes.values():
                table = route.table
                if self.options.load_path:
                    for replica in list(table.replicas.values()):
                        if replica.container_uuid not in self._polling:
                            self._polling.add(replica.container_uuid)
                            self._spawn(self._poll_load(table, replica))
                if self.options.health_path:
                    for replica in table.due_for_probe():
                        if replica.container_uuid not in self._probing:
                            self._probing.add(replica.container_uuid)
                            self._spawn(self._probe(table, replica))
            self._upstream.sweep()
            await asyncio.sleep(self.options.interval)

    def _spawn(self, coroutine: Any) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _get(self, url: str, timeout: float) -> tuple[int, bytes, str]:
        """A load poll's or health probe's GET of a replica URL, all of it within `timeout`."""
        return await asyncio.wait_for(self._get_within(url), timeout)

    async def _get_within(self, url: str) -> tuple[int, bytes, str]:
        answer = await self._upstream.request("GET", url, "", CIMultiDict())
        try:
            body = await answer.content.read(LOAD_REPORT_MAX_BYTES)
            return answer.status, body, answer.headers.get("Content-Type", "")
        finally:
            answer.release()  # kept for the next poll when read to its end (an https replica: no new handshake)

    async def _poll_load(self, table, replica) -> None:
        try:
            status, body, content_type = await self._get(replica.url + self.options.load_path,
                                                         min(LOAD_POLL_TIMEOUT_SECONDS, max(self.options.interval, 0.5)))
            if status != 200:
                raise LoadReportError(f"HTTP {status}")
            table.record_report(replica, parse_load_report(body, content_type, time.monotonic()))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, LoadReportError) as error:
            replica.report_error = f"{type(error).__name__}: {error}"
        finally:
            self._polling.discard(replica.container_uuid)

    async def _probe(self, table, replica) -> None:
        try:
            status, _, _ = await self._get(replica.url + self.options.health_path, HEALTH_PROBE_TIMEOUT_SECONDS)
            ok = 200 <= status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        finally:
            self._probing.discard(replica.container_uuid)
        if ok:
            table.readmit(replica)
        else:
            table.probe_failed(replica)

    # ---- request handling ----------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        own = request.rel_url.path.startswith(GATEWAY_PREFIX)
        self.http_active_requests += 1
        if not own:
            self.active_requests += 1
            self.totals.requests += 1
        self._idle.clear()
        outcome: dict[str, Any] = {"served_by": None, "retries": 0, "route": None, "started": started}
        status = 500
        try:
            response = await self._route(request, outcome)
            status = response.status
            return response
        except (ConnectionError, asyncio.CancelledError):
            status = 499  # the client went away (nginx's convention)
            raise
        finally:
            self.http_active_requests -= 1
            if not own:
                self.active_requests -= 1
            if outcome["route"] is not None:
                outcome["route"].active_requests -= 1
            if self.http_active_requests == 0:
                self._idle.set()
            elapsed = time.perf_counter() - started
            self._count(request.method, status, elapsed, own, outcome["served_by"] is not None, outcome["route"])
            if self.access_log is not None:
                self.access_log(f"{request.remote} \"{request.method} {request.rel_url.path}\" {status} "
                                f"{elapsed * 1000:.1f}ms served_by={outcome['served_by'] or '-'} retries={outcome['retries']}")

    def _count(self, method: str, status: int, elapsed: float, own: bool, reached_replica: bool, route: Route | None) -> None:
        if own:
            self.totals.gateway_endpoint_requests += 1
        else:
            self.totals.finished(status, reached_replica)
            if route is not None:
                route.totals.finished(status, reached_replica)
        self._metrics.observe(method if method in KNOWN_METHODS else "_OTHER", status, elapsed,
                              route.name if route is not None else "")

    def _host_allowed(self, request: web.BaseRequest) -> bool:
        if not self._check_host:
            return True
        header = request.headers.get("Host")
        allowed = self._host_verdicts.get(header)
        if allowed is None:
            allowed = host_header_allowed(header, self._allowed_hosts)
            if len(self._host_verdicts) < HOST_VERDICT_CACHE:  # bounded: Host is client-chosen
                self._host_verdicts[header] = allowed
        return allowed

    def _authorized(self, request: web.BaseRequest) -> bool:
        if self._auth is None:
            return True
        given = request.headers.get("Authorization", "").strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, self._auth)

    async def _route(self, request: web.BaseRequest, outcome: dict[str, Any]) -> web.StreamResponse:
        if not self._host_allowed(request):
            return error_response(421, ErrorType.BAD_REQUEST, f"不接受的 Host 请求头: {request.headers.get('Host')!r}。",
                                  "网关只接受本机回环地址 (localhost / 127.0.0.1 / ::1) 作为 Host, 防止 DNS rebinding; "
                                  "需要其他主机名时用 --allow-host 加上。", {"host": request.headers.get("Host")})
        if not self._authorized(request):
            return error_response(401, ErrorType.UNAUTHORIZED, "缺少或错误的 Authorization: Bearer <token>。",
                                  "网关监听在非回环地址时需要认证: 请求头加 Authorization: Bearer <--auth-token-env 指定的变量的值>。",
                                  headers={"WWW-Authenticate": "Bearer"})
        path = request.rel_url.path
        if path.startswith(GATEWAY_PREFIX):
            if path == STATUS_PATH and request.method in ("GET", "HEAD"):
                return json_response(200, self.status())
            if path == METRICS_PATH and request.method in ("GET", "HEAD"):
                body, content_type = self._metrics.render()
                response = web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
                return response
            return error_response(404, ErrorType.NOT_FOUND, f"网关没有这个路径: {request.method} {path}",
                                  f"网关自己的接口: GET {STATUS_PATH}, GET {METRICS_PATH}; 其他路径转发给副本。",
                                  {"path": path, "available_paths": [STATUS_PATH, METRICS_PATH]})
        self.totals.proxied += 1
        return await self._proxy(request, outcome)

    async def _read_body(self, request: web.BaseRequest, keep: int = REPLAY_LIMIT_BYTES) -> tuple[bytes | None, Any]:
        """(the whole body, None) when it is at most `keep` bytes, else (None, async iterator
        streaming it); only bodies up to REPLAY_LIMIT_BYTES are replayed on another replica."""
        if not request.body_exists:
            return b"", None
        length = request.content_length
        if length is not None and length > MAX_REQUEST_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BODY_BYTES, actual_size=length)
        content = request.content
        timeout = self.options.body_idle_timeout
        chunks: list[bytes] = []
        size = 0
        while size <= keep:
            chunk = await asyncio.wait_for(content.readany(), timeout)
            if not chunk:
                return b"".join(chunks), None
            chunks.append(chunk)
            size += len(chunk)

        async def rest():
            total = size
            for chunk in chunks:
                yield chunk
            while True:
                chunk = await asyncio.wait_for(content.readany(), timeout)
                if not chunk:
                    return
                total += len(chunk)
                if total > MAX_REQUEST_BODY_BYTES:
                    raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BODY_BYTES, actual_size=total)
                yield chunk

        return None, rest()

    def _upstream_headers(self, request: web.BaseRequest) -> CIMultiDict:
        headers = end_to_end(request.headers, "Host", "Content-Length")
        if self._auth is not None:
            headers.popall("Authorization", None)  # the gateway's own credential stays here
        if self._never_forward:  # e.g. the AutoDL token pasted into a header: never to a replica
            for name in [name for name, value in headers.items() if any(secret in value for secret in self._never_forward)]:
                headers.popall(name, None)
        peer = request.remote or ""
        previous = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
        headers["X-Forwarded-Proto"] = request.scheme
        if request.headers.get("Host"):
            headers["X-Forwarded-Host"] = request.headers["Host"]
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        return headers

    async def _proxy(self, request: web.BaseRequest, outcome: dict[str, Any]) -> web.StreamResponse:
        route, path = self.default_route, request.raw_path
        if route is None:
            route, path = self.router.by_path(path)
            if route is None and request.method in ("GET", "HEAD") and \
                    (request.rel_url.path == MODELS_PATH or request.rel_url.path.startswith(MODELS_PATH + "/")):
                return self._models_answer(request.rel_url.path)
        if route is not None and route.view is not None and route.view.ended:
            return self._route_ended(route)
        by_model = route is None
        try:
            body, stream = await self._read_body(request, MODEL_BODY_LIMIT_BYTES if by_model else REPLAY_LIMIT_BYTES)
        except (asyncio.TimeoutError, web.HTTPRequestEntityTooLarge) as error:
            return self._body_failed(error)
        parsed = None
        if body and (by_model or route.policy.uses_affinity):
            parsed = await self._parse_body(body)
        if by_model:
            if stream is not None:
                return self._model_body_too_large(stream)
            route = self._route_of_model(parsed)
            if not isinstance(route, Route):
                return route  # the error answer
            if route.view is not None and route.view.ended:
                return self._route_ended(route)
        outcome["route"] = route
        route.active_requests += 1
        route.totals.requests += 1
        route.totals.proxied += 1
        key = affinity_key(request.headers.get(SESSION_HEADER), parsed) if route.policy.uses_affinity else None
        table = route.table
        headers = self._upstream_headers(request)
        if body and request.content_length is None:
            headers["Content-Length"] = str(len(body))  # a chunked request re-sent with its length
        tried: frozenset = frozenset()
        attempts = 1 + (self.options.retries if stream is None and len(body) <= REPLAY_LIMIT_BYTES else 0)
        last_failure: str | None = None
        for attempt in range(attempts):
            try:
                ticket = await table.acquire(tried, key)
            except NoReplicas as reason:
                if last_failure is not None:
                    return self._upstream_failed(last_failure, tried)
                return error_response(503, ErrorType.NO_REPLICAS, f"没有可用副本: {reason}",
                                      "副本可能还在启动、健康检查未通过或已全部停止; 稍后重试, 或查看 GET /_gateway/status。",
                                      {"queue_timeout_seconds": route.options.queue_timeout, **self._route_details(route)},
                                      {"Retry-After": self._retry_after()})
            except Overloaded as reason:
                self.totals.queue_rejections += 1
                route.totals.queue_rejections += 1
                return error_response(503, ErrorType.OVERLOADED, f"所有副本都在满负荷处理, 请求未能排上: {reason}",
                                      "稍后重试 (见 Retry-After), 或增加副本 / 调大 --max-queue、--queue-timeout。",
                                      {"queue_depth": table.queued, "max_queue": route.options.max_queue, **self._route_details(route)},
                                      {"Retry-After": self._retry_after()})
            replica = ticket.replica
            tried = tried | {replica.container_uuid}
            outcome["served_by"] = replica.container_uuid
            can_retry = attempt + 1 < attempts
            try:
                upstream = await self._upstream.request(request.method, replica.url, path, headers, body or b"", stream)
            except RequestBodyFailed as failed:
                table.finish(ticket, "cancelled")  # the client's body broke off: not the replica's fault
                return self._body_failed(failed.cause)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                last_failure = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self._failed(table, ticket, "failure", last_failure)
                if can_retry and table.could_serve(tried):
                    self._retried(route, replica, outcome)
                    continue
                return self._upstream_failed(last_failure, tried)
            except BaseException:
                table.finish(ticket, "cancelled")
                raise
            if upstream.status in RETRY_STATUSES and can_retry and table.could_serve(tried):
                last_failure = f"HTTP {upstream.status}"
                upstream.release()
                self._failed(table, ticket, "error", last_failure)
                self._retried(route, replica, outcome)
                continue
            return await self._relay(request, upstream, ticket, route, outcome["started"])
        return self._upstream_failed(last_failure or "no attempt", tried)  # not reached: the loop returns

    async def _parse_body(self, body: bytes) -> LlmRequest:
        if len(body) <= PARSE_ON_LOOP_BYTES:
            return parse_body(body)
        return await asyncio.get_running_loop().run_in_executor(None, parse_body, body)

    # ---- answers of a gateway with routes ------------------------------------------------

    def _route_details(self, route: Route) -> dict[str, Any]:
        return {} if self.router is None else {"route": route.name, "deployment_uuid": route.deployment_uuid}

    def _route_ended(self, route: Route) -> web.Response:
        view = route.view
        hint = "部署已停止或删除, 不会再有副本; 换用别的部署。"
        if self.router is not None:
            hint = "这个路由的部署已停止或删除, 不会再有副本; 其他路由照常服务。重新部署后用新的 --route 重启网关。"
        return error_response(503, ErrorType.NO_REPLICAS, f"没有可用副本: {view.ended_reason}", hint,
                              {"ended": view.ended, **self._route_details(route)})

    def _known(self) -> dict[str, Any]:
        return {"available_models": self.router.models, "available_prefixes": [prefix for prefix, _ in self.router.prefixes]}

    def _route_of_model(self, parsed: LlmRequest | None) -> Route | web.Response:
        model = parsed.model if parsed is not None else None
        if model is None:
            return error_response(400, ErrorType.BAD_REQUEST, "请求没有指明模型: 网关按请求体 (JSON) 的 model 字段选择部署。",
                                  "在 JSON 请求体中写 \"model\": 下面可用模型之一 (GET /v1/models 列出); "
                                  "非 OpenAI 风格的服务用路径前缀路由 (--route-prefix)。", self._known())
        route = self.router.by_model.get(model)
        if route is None:
            return self._unknown_model(model)
        return route

    def _unknown_model(self, model: str) -> web.Response:
        return error_response(404, ErrorType.NOT_FOUND, f"没有模型 {model!r} 的路由。",
                              "model 要与可用模型之一完全一致 (区分大小写); 可用模型见 details.available_models 或 GET /v1/models。",
                              {"model": model, **self._known()})

    def _model_body_too_large(self, stream: Any) -> web.Response:
        if hasattr(stream, "aclose"):
            self._spawn(stream.aclose())
        response = error_response(413, ErrorType.BAD_REQUEST,
                                  f"按 model 路由的请求体最多 {MODEL_BODY_LIMIT_BYTES} 字节 (要读完整个 JSON 才知道 model)。",
                                  "减小请求体; 或给这个部署配一个路径前缀路由 (--route-prefix), 按路径转发的请求体不受这个限制。",
                                  {"max_bytes": MODEL_BODY_LIMIT_BYTES, **self._known()})
        response.force_close()  # the unread body makes this connection unusable
        return response

    def _models_answer(self, path: str) -> web.Response:
        """GET /v1/models (and /v1/models/{id}) in OpenAI's format: the model routes."""
        created = int(self.started_at)

        def entry(model: str) -> dict[str, Any]:
            return {"id": model, "object": "model", "created": created, "owned_by": "autodl-esd"}

        if path.rstrip("/") == MODELS_PATH:
            return json_response(200, {"object": "list", "data": [entry(model) for model in self.router.models]})
        model = path[len(MODELS_PATH) + 1:]
        return json_response(200, entry(model)) if model in self.router.by_model else self._unknown_model(model)

    @staticmethod
    def _body_failed(error: BaseException) -> web.Response:
        """408 for a client that stopped sending its body, 413 for one that sent too much
        (`error` from reading it); the rest of the body may still arrive: the connection is done."""
        if isinstance(error, web.HTTPRequestEntityTooLarge):
            response = error_response(413, ErrorType.BAD_REQUEST, f"请求体超过 {MAX_REQUEST_BODY_BYTES} 字节。", "减小请求体。",
                                      {"max_bytes": MAX_REQUEST_BODY_BYTES})
        elif isinstance(error, asyncio.TimeoutError):
            response = error_response(408, ErrorType.BAD_REQUEST, "请求体发送中断 (超时)。", "客户端需要连续发送完整的请求体。")
        else:  # the client's connection broke mid-body: it will not read this answer
            response = error_response(400, ErrorType.BAD_REQUEST, f"请求体没有完整到达: {type(error).__name__}。",
                                      "客户端需要发送完整的请求体。")
        response.force_close()
        return response

    def _retried(self, route: Route, replica, outcome: dict[str, Any]) -> None:
        replica.retries += 1
        self.totals.retries += 1
        route.totals.retries += 1
        outcome["retries"] += 1

    def _failed(self, table, ticket: Ticket, outcome: str, reason: str) -> None:
        table.eject(ticket.replica, reason)
        table.finish(ticket, outcome)

    def _retry_after(self) -> str:
        # Long enough for a queue to move or a replica to start being probed; whole seconds (RFC 9110).
        return str(max(1, math.ceil(self.options.interval)))

    def _upstream_failed(self, reason: str, tried: frozenset) -> web.Response:
        return error_response(502, ErrorType.UPSTREAM_ERROR, f"副本没有给出响应: {reason}",
                              "网关已在其他副本上重试; 查看 GET /_gateway/status 中各副本的状态, 稍后重试。",
                              {"reason": reason, "tried": sorted(tried)})

    async def _relay(self, request: web.BaseRequest, upstream: Answer, ticket: Ticket, route: Route,
                     started: float) -> web.StreamResponse:
        """Stream the replica's answer to the client chunk by chunk; nothing is retried from here."""
        table = route.table
        headers = end_to_end(upstream.headers, "Content-Length")
        headers["X-Served-By"] = ticket.replica.container_uuid
        outcome = "error" if upstream.status >= 500 else "success"
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY_BYTES and request.method != "HEAD":
            return await self._relay_small(upstream, table, ticket, headers, outcome)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        # A streamed LLM answer (SSE) is timed token by token (stream_timing.py).
        clock = SseClock() if upstream.status == 200 and \
            upstream.headers.get("Content-Type", "").startswith("text/event-stream") else None
        try:
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    if clock is not None:
                        clock.feed(chunk, time.perf_counter())
            except BROKEN_ANSWER as error:
                # The replica died (or stalled) mid-answer: end this client's stream with an
                # error (no final chunk, connection closed), never a hang; eject the replica.
                outcome = "failure"
                table.eject(ticket.replica, f"响应中途断开: {type(error).__name__}")
                self.totals.aborted_streams += 1
                route.totals.aborted_streams += 1
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            if clock is not None:
                self._metrics.observe_stream(route.name, ticket.replica.container_uuid,
                                             clock.time_to_first_token(started), clock.time_per_output_token())
            return response
        except (ConnectionError, aiohttp.ClientConnectionResetError, asyncio.CancelledError):
            outcome = "cancelled"  # the client went away: not the replica's fault
            upstream.close()
            raise
        finally:
            upstream.release()
            table.finish(ticket, outcome)

    async def _relay_small(self, upstream: Answer, table, ticket: Ticket, headers: CIMultiDict,
                           outcome: str) -> web.StreamResponse:
        """A small answer of known length goes out in one write (headers and body together):
        half the system calls of streaming it, which is most of a small request's cost."""
        try:
            body = await upstream.read()
        except BROKEN_ANSWER as error:
            outcome = "failure"  # it answered, so the request may have run: never replayed
            table.eject(ticket.replica, f"响应中途断开: {type(error).__name__}")
            return self._upstream_failed(f"{type(error).__name__}: 响应体未完整到达", frozenset({ticket.replica.container_uuid}))
        except BaseException:
            outcome = "cancelled"
            upstream.close()
            raise
        finally:
            upstream.release()
            table.finish(ticket, outcome)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)

    # ---- what status, metrics and an autoscaler read -------------------------------------

    def registry_state(self) -> dict[str, Any]:
        return self._single().registry_state()

    def load(self) -> dict[str, Any]:
        """The autoscaler's input (see the module docstring)."""
        return self._single().load(self.active_requests)

    def status(self) -> dict[str, Any]:
        head = {"status": "success", "url": self.url}
        uptime = {"uptime_seconds": round(time.time() - self.started_at, 3)}
        totals = {"totals": {**self.totals.document(), "active": self.active_requests}}
        if self.default_route is not None:
            route = self.default_route
            return {**head, "deployment_uuid": route.deployment_uuid, "policy": self.options.policy, **uptime,
                    **self._route_status(route, self.active_requests), "latency": self._latency(route), **totals,
                    "extensions": {extension.name: extension.status() for extension in self.all_extensions()}}
        return {**head, **uptime,
                "routes": [{**self._route_identity(route), "policy": route.options.policy,
                            **self._route_status(route, route.active_requests), "latency": self._latency(route),
                            "totals": {**route.totals.document(with_endpoints=False), "active": route.active_requests},
                            "extensions": {extension.name: extension.status() for extension in route.extensions}}
                           for route in self.routes.values()],
                "latency": None if self._metrics is None else self._metrics.latency(None),
                **totals, "extensions": {extension.name: extension.status() for extension in self.extensions}}

    def _latency(self, route: Route, container_uuid: str | None = None) -> dict[str, Any] | None:
        """TTFT / TPOT p50 and p95 of streamed answers (metrics.py), of a replica or the route."""
        return None if self._metrics is None else self._metrics.latency(route.name, container_uuid)

    @staticmethod
    def _route_identity(route: Route) -> dict[str, Any]:
        match = {"model": route.model} if route.model is not None else {"prefix": route.prefix}
        return {"route": route.name, **match, "deployment_uuid": route.deployment_uuid}

    def _route_status(self, route: Route, active: int) -> dict[str, Any]:
        now = time.monotonic()
        table = route.table
        replicas = []
        for replica in table.all_replicas():
            report = replica.report
            replicas.append({
                "container_uuid": replica.container_uuid, "url": replica.url, "machine_id": replica.machine_id,
                "gpu_name": replica.gpu_name, "state": replica.state(now), "healthy": replica.healthy,
                "inflight": replica.inflight, "remote_inflight": replica.remote_inflight,
                "ejected_for_seconds": round(max(0.0, replica.ejected_until - now), 3) if replica.ejected_until else None,
                "ejections": replica.ejections, "retries": replica.retries, "requests": dict(replica.outcomes),
                "load_report": None if report is None else {"running": report.running, "waiting": report.waiting,
                                                            "age_seconds": round(now - report.at, 3)},
                "load_report_error": replica.report_error,
                "latency": self._latency(route, replica.container_uuid),
            })
        options = route.options
        policy = route.policy.status()
        return {
            **({"policy_state": policy} if policy else {}),
            "registry": route.registry_state(),
            "queue": {"depth": table.queued, "max": options.max_queue, "timeout_seconds": options.queue_timeout,
                      "max_inflight_per_replica": options.max_inflight_per_replica or None},
            "load": route.load(active),
            "replicas": replicas,
            "departed_replicas": self._departed(table),
            **self._departed_beyond(table),
        }

    def _departed(self, table) -> list[dict[str, Any]]:
        """Replicas that left (scale-down, replaced), with the counts they took with them."""
        now = table.clock()
        return [{"container_uuid": r.container_uuid, "machine_id": r.machine_id, "requests": dict(r.outcomes),
                 "retries": r.retries, "ejections": r.ejections,
                 "departed_seconds_ago": round(max(0.0, now - r.departed_at), 3) if r.departed_at is not None else None}
                for r in table.departed.values()]

    @staticmethod
    def _departed_beyond(table) -> dict[str, Any]:
        beyond = table.departed_beyond
        if not beyond["replicas"]:
            return {}
        return {"departed_replicas_not_listed": {"replicas": beyond["replicas"], "requests": dict(beyond["requests"]),
                                                 "retries": beyond["retries"], "ejections": beyond["ejections"]}}

    def _replica_counts(self, table) -> dict[str, Any]:
        return {"replicas": [{"container_uuid": r.container_uuid, "requests": dict(r.outcomes), "retries": r.retries,
                              "ejections": r.ejections} for r in table.all_replicas()],
                "departed_replicas": [{key: entry[key] for key in ("container_uuid", "requests", "retries", "ejections")}
                                      for entry in self._departed(table)],
                **self._departed_beyond(table)}

    def summary(self) -> dict[str, Any]:
        """What the gateway did, for its exit: counts, and its streams' TTFT/TPOT (the status
        page that had them is gone once it stops)."""
        latency = {"latency": None if self._metrics is None else self._metrics.latency(None)}
        if self.default_route is not None:
            route = self.default_route
            return {"url": self.url, "deployment_uuid": route.deployment_uuid, **self.totals.document(),
                    **self._replica_counts(route.table), **latency}
        routes = []
        for route in self.routes.values():
            ended = {"ended": route.ended_by} if route.ended_by else {}
            routes.append({**self._route_identity(route), **ended, **route.totals.document(with_endpoints=False),
                           **self._replica_counts(route.table), "latency": self._latency(route)})
        return {"url": self.url, **self.totals.document(), "routes": routes, **latency}
