"""HTTP front end: routes, the response envelope, auth, faults, /svc and /_sim.

Three route families share one ThreadingHTTPServer:

- `/api/...`   the platform API. Header `Authorization: <token>` (raw, no Bearer), JSON
               envelope `{"code", "msg", "data", "request_id"}`, business errors as HTTP 200.
- `/svc/<container_uuid>/...`  the container's own service (no auth), answering only while
               the container runs, after the machine's latency. Like a model server it also
               speaks OpenAI (`POST /v1/completions`, `/v1/chat/completions`, SSE with
               `"stream": true`), with a prefix cache and prefill/decode delays (llm.py),
               and reports its queue and cache at `GET /metrics` in vLLM's format.
- `/_sim/...`  test controls for a simulator in another process (token required).
"""

from __future__ import annotations

import ipaddress
import json
import re
from email.utils import format_datetime
import sys
import threading
import time
import traceback
import uuid as uuid_lib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from . import lifecycle as lc
from .account import GATED_MSG, GATED_PATH_PREFIX, Account
from .clock import SimClock
from .routes import Api, ApiError
from .controllers import Container
from .faults import FaultInjector
from .llm import PrefixCache, Timing, prompt_tokens
from .world import NotFound, World

ALL_DIALECTS = frozenset({"private", "public", "both"})
PRIVATE_ONLY = frozenset({"private", "both"})
PUBLIC_ONLY = frozenset({"public", "both"})

# (method, path) -> (Api method name, dialects that serve it). Routes the facts mark as
# undocumented for a dialect answer 404 there, like the real host would.
API_ROUTES: dict[tuple[str, str], tuple[str, frozenset]] = {
    ("POST", "/api/v1/dev/image/private/list"): ("list_private_images", ALL_DIALECTS),
    ("POST", "/api/v2/image/list"): ("list_system_images", PRIVATE_ONLY),
    ("POST", "/api/v1/dev/deployment"): ("create_deployment", ALL_DIALECTS),
    ("DELETE", "/api/v1/dev/deployment"): ("delete_deployment", ALL_DIALECTS),
    ("POST", "/api/v1/dev/deployment/list"): ("list_deployments", ALL_DIALECTS),
    ("POST", "/api/v1/dev/deployment/container/event/list"): ("list_events", ALL_DIALECTS),
    ("POST", "/api/v1/dev/deployment/container/list"): ("list_containers", ALL_DIALECTS),
    ("PUT", "/api/v1/dev/deployment/container/stop"): ("stop_container", ALL_DIALECTS),
    ("PUT", "/api/v1/dev/deployment/replica_num"): ("set_replica_num", ALL_DIALECTS),
    ("PUT", "/api/v1/dev/deployment/operate"): ("operate_deployment", ALL_DIALECTS),
    ("POST", "/api/v1/dev/deployment/blacklist"): ("add_blacklist", ALL_DIALECTS),
    ("GET", "/api/v1/dev/deployment/blacklist"): ("list_blacklist", PUBLIC_ONLY),
    ("GET", "/api/v1/dev/machine/gpu_stock"): ("global_stock", ALL_DIALECTS),
    ("POST", "/api/v1/dev/machine/region/gpu_stock"): ("region_stock", ALL_DIALECTS),
    ("GET", "/api/v1/dev/deployment/ddp/overview"): ("duration_packages", PUBLIC_ONLY),
    # Account routes: the wallet is on the developer host; WeChat is on www.autodl.com,
    # served here on the one simulated host.
    ("POST", "/api/v1/dev/wallet/balance"): ("wallet_balance", ALL_DIALECTS),
    ("POST", "/api/v1/wechat/message/send"): ("send_wechat_message", ALL_DIALECTS),
}
CREATE_ROUTE = ("POST", "/api/v1/dev/deployment")
# Routes that change something: the ones `commit_delay_seconds` holds back before committing.
WRITE_ROUTES = frozenset({
    CREATE_ROUTE,
    ("DELETE", "/api/v1/dev/deployment"),
    ("PUT", "/api/v1/dev/deployment/container/stop"),
    ("PUT", "/api/v1/dev/deployment/replica_num"),
    ("PUT", "/api/v1/dev/deployment/operate"),
    ("POST", "/api/v1/dev/deployment/blacklist"),
})

BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body>"
    "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
# Largest request body read (bytes). A create request is a few KB; refusing more keeps a
# stray or hostile Content-Length from making the simulator allocate without bound.
GATEWAY_TIMEOUT_PAGE = (
    "<html><head><title>504 Gateway Time-out</title></head><body>"
    "<center><h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body></html>"
)
# How long a /svc request may queue behind busy ones before the gateway gives up; nginx's
# default proxy read timeout is 60 s, shortened so a stuck test fails in bounded time.
SERVICE_QUEUE_TIMEOUT_SECONDS = 30.0
MAX_BODY_BYTES = 1024 * 1024
# What /svc/<uuid>/files keeps per container: enough for the checkpoints and markers tests
# write, and a bound on what repeated POSTs (each up to MAX_BODY_BYTES) can pile up.
MAX_FILES_PER_CONTAINER = 1000
MAX_FILE_BYTES_PER_CONTAINER = 4 * 1024 * 1024
# OpenAI routes: tokens generated when the request names no max_tokens (OpenAI's default for
# completions is 16), and the most one request may ask for, so a test cannot hold a slot long.
DEFAULT_COMPLETION_TOKENS = 16
MAX_COMPLETION_TOKENS = 512
OPENAI_ROUTES = ("/v1/completions", "/v1/chat/completions")
# What GET /metrics answers: the series of vLLM's Prometheus page a router reads (the real
# page has many more): its queue, and its prefix cache's queried and hit prompt tokens. A
# fixed template of a model server's output, not an exporter.
VLLM_METRICS_PAGE = (
    "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{{model_name="{model}"}} {running:.1f}\n'
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{{model_name="{model}"}} {waiting:.1f}\n'
    "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.\n"
    "# TYPE vllm:prefix_cache_queries_total counter\n"
    'vllm:prefix_cache_queries_total{{model_name="{model}"}} {queries:.1f}\n'
    "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.\n"
    "# TYPE vllm:prefix_cache_hits_total counter\n"
    'vllm:prefix_cache_hits_total{{model_name="{model}"}} {hits:.1f}\n'
)
SIM_MODEL = "autodl-sim"
# An unauthenticated body is read and dropped in pieces of this size, never held whole: an
# anonymous client cannot make the simulator allocate (or keep) a megabyte per request.
DRAIN_CHUNK_BYTES = 64 * 1024
# An integer literal longer than this is refused with the whole body: int() is never asked
# (past 4,300 digits it raises ValueError), and every field checks its own narrower range
# (int64 at most) with its name in the message.
MAX_INT_DIGITS = 100
FAULT_MESSAGES = {500: ("InternalError", "服务器内部错误"), 503: ("ServiceUnavailable", "服务暂时不可用，请稍后重试")}


class BodyNotJson(ValueError):
    """A request body the platform's JSON decoder would refuse."""


def _refuse_constant(name: str) -> None:
    raise BodyNotJson(f"{name} 不是合法的 JSON 数字")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BodyNotJson(f"数字 {text[:20]} 超出浮点数范围")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BodyNotJson(f"中的整数 {text[:12]}... 有 {len(text.lstrip('-'))} 位, 超出范围")
    return int(text)


def loads_body(body: bytes) -> Any:
    """A request body as JSON, decoded the way the platform's (Go) decoder would: no NaN or
    Infinity, no number past float64 or MAX_INT_DIGITS, nesting within the recursion limit. Anything
    else raises BodyNotJson, never a 500."""
    try:
        # Decoded as UTF-8 first: json.loads(bytes) would guess UTF-16/32, which Go never does.
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except BodyNotJson:
        raise
    except RecursionError:
        raise BodyNotJson("嵌套过深") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise BodyNotJson("不是合法的 JSON") from error


def _is_loopback_name(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def envelope(code: str, msg: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data, "request_id": uuid_lib.uuid4().hex}


class Backend(Protocol):
    """What the HTTP front end uses of the simulator behind it (`app.Simulator`, which passes
    itself in): said here, so the front end never imports the app that imports it."""

    token: str
    verbose: bool
    clock: SimClock
    account: Account
    world: World

    def record_request(self, method: str, path: str, body: bytes, query: dict) -> None: ...

    def service_slot(self, container_uuid: str, concurrency: int) -> threading.BoundedSemaphore | None: ...

    def prefix_cache(self, container_uuid: str) -> PrefixCache: ...

    def control(self, method: str, path: str, params: dict) -> Any: ...


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Tests and benches open many short connections; the default backlog of 5 drops some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: Backend, api: Api,
                 faults: FaultInjector, dialect: str, container_uuid: str | None = None) -> None:
        super().__init__(address, SimRequestHandler)
        self.sim, self.api, self.faults, self.dialect = sim, api, faults, dialect
        # Set: this server is that container's own service port (Simulator service_ports).
        self.container_uuid = container_uuid
        # container uuid -> [running, waiting] /svc requests, for GET /metrics
        self.service_load: dict[str, list[int]] = {}
        self.service_load_lock = threading.Lock()

    def count_service(self, container_uuid: str, running: int = 0, waiting: int = 0) -> None:
        with self.service_load_lock:
            load = self.service_load.setdefault(container_uuid, [0, 0])
            load[0] += running
            load[1] += waiting

    def service_load_of(self, container_uuid: str) -> tuple[int, int]:
        with self.service_load_lock:
            running, waiting = self.service_load.get(container_uuid, (0, 0))
            return running, waiting

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (timeouts in tests, Ctrl-C) is routine, not a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class SimRequestHandler(BaseHTTPRequestHandler):
    server: SimHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so a requests.Session reuses connections
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client's
    # delayed ACK stalls every response by ~40 ms.
    disable_nagle_algorithm = True
    server_version = "AutoDLSim/1.0"
    # An idle keep-alive connection (or one stalled mid-request) is closed after this long:
    # longer than any pause a test or a pooled client makes, short enough to bound a stall.
    timeout = 60.0

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header in simulated time, so clients can read the platform's clock
        (cost and guards measure run time on it, not on the local clock)."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        clock = self.server.sim.clock
        return format_datetime(clock.wall_time(clock.now()), usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if self.server.sim.verbose:
            sys.stderr.write(f"[sim] {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # No route uses these, but they get the envelope's 404 (HEAD without a body) like any
    # other unknown route instead of the stdlib's HTML 501 page.
    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    # ----- plumbing ----------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests, oversized lines, unknown methods: the JSON envelope, never
        the standard library's HTML page."""
        self.close_connection = True
        try:
            self._send_json(code, envelope("RequestParameterIsWrong", f"请求无法解析：{message or code}"))
        except OSError:
            pass  # the client is gone

    def _host_refused(self) -> bool:
        """A loopback simulator refuses Host names a web page could rebind to it: any domain
        (dotted) name other than *.localhost, any non-loopback address. Single-label names
        (a container's service name in a test network) cannot come from a public DNS."""
        if not _is_loopback_name(str(self.server.server_address[0])):
            return False
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        if not host or _is_loopback_name(host):
            return False
        try:
            ipaddress.ip_address(host)
            return True  # another machine's address
        except ValueError:
            return "." in host.rstrip(".")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        if self._host_refused():
            self.close_connection = True
            self._send_json(421, envelope("Forbidden", f"不接受的 Host 请求头：{self.headers.get('Host')}（只接受本机回环地址）"))
            return
        # /api and /_sim want the token; /svc (a container's service) and a container's own port do not.
        needs_token = self.server.container_uuid is None and not url.path.startswith("/svc/")
        refused = self._auth_error() if needs_token else None
        try:
            body = self._read_body(keep=refused is None)
        except ApiError as error:
            # The body's framing is unknown, so this connection cannot carry another request.
            self.close_connection = True
            self._send_json(error.http_status, envelope(error.code, error.msg))
            return
        if refused is not None:  # answered before anything is logged or parsed
            self._send_json(refused.http_status, envelope(refused.code, refused.msg))
            return
        try:
            if self.server.container_uuid is not None:  # a container's own port: all of it is its service
                self._handle_service(method, f"/svc/{self.server.container_uuid}{url.path}", body)
            elif url.path.startswith("/svc/"):
                self._handle_service(method, url.path, body)
            elif url.path == "/_sim" or url.path.startswith("/_sim/"):
                self._handle_control(method, url.path, body)
            else:
                self._handle_api(method, url.path, dict(parse_qsl(url.query)), body)
        except ConnectionError as error:
            # The client hung up before the answer (e.g. its timeout was shorter than the
            # service latency): routine, so no traceback and no 500 on a closed socket.
            self.close_connection = True
            if self.server.sim.verbose:
                sys.stderr.write(f"[sim] {self.address_string()} 客户端已断开: {method} {url.path} ({type(error).__name__})\n")
        except Exception:  # a simulator bug must still answer, and say where it broke
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, envelope("InternalError", "模拟器内部错误"))

    def _read_body(self, keep: bool = True) -> bytes:
        """The body (at most MAX_BODY_BYTES); with keep=False it is read and dropped in
        DRAIN_CHUNK_BYTES pieces, so the connection stays usable without holding it."""
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit() or len(raw) > 12:
            raise ApiError("RequestParameterIsWrong", "请求参数错误：Content-Length 无效", 400)
        length = int(raw)
        if length > MAX_BODY_BYTES:
            raise ApiError("RequestParameterIsWrong", "请求参数错误：请求体过大", 413)
        if keep:
            return self.rfile.read(length) if length > 0 else b""
        while length > 0:
            chunk = self.rfile.read(min(length, DRAIN_CHUNK_BYTES))
            if not chunk:
                break
            length -= len(chunk)
        return b""

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document, ensure_ascii=False, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _auth_error(self) -> ApiError | None:
        # Whitespace around a header value is not part of it (RFC 9110 5.5); a token pasted
        # with a stray space or tab still authenticates, as behind any HTTP front end.
        given = (self.headers.get("Authorization") or "").strip(" \t")
        if not given:
            return ApiError("Unauthorized", "缺少 Authorization 请求头（开发者 Token）", 401)
        if given.startswith("Bearer ") and given[len("Bearer "):] == self.server.sim.token:
            return ApiError("Unauthorized", "Authorization 请直接填写 Token，不要加 Bearer 前缀", 401)
        if given != self.server.sim.token:
            return ApiError("Unauthorized", "开发者 Token 无效", 401)
        return None

    @staticmethod
    def _parse_json(body: bytes, http_status: int = 200) -> dict:
        """The body as a JSON object. A body that is not one is a parameter error, and on the
        API a business error like any other: HTTP 200 (the platform's rule, §3.2)."""
        if not body.strip():
            return {}
        try:
            params = loads_body(body)
        except BodyNotJson as problem:
            raise ApiError("RequestParameterIsWrong", f"请求参数错误：请求体{problem}", http_status) from None
        if not isinstance(params, dict):
            raise ApiError("RequestParameterIsWrong", "请求参数错误：请求体必须是 JSON 对象", http_status)
        return params

    # ----- /api ----------------------------------------------------------------------------

    def _handle_api(self, method: str, path: str, query: dict, body: bytes) -> None:
        try:
            # _dispatch answered an anonymous client already: it cannot fill the request log.
            self.server.sim.record_request(method, path, body, query)
            self._answer_api(method, path, query, body)
        except ApiError as error:
            self._send_json(error.http_status, envelope(error.code, error.msg))

    def _answer_api(self, method: str, path: str, query: dict, body: bytes) -> None:
        faults = self.server.faults
        status = faults.error_status()
        if status == 502:
            self._send(502, BAD_GATEWAY_PAGE.encode(), "text/html")
            return
        if status:
            raise ApiError(*FAULT_MESSAGES[status], http_status=status)
        delay = faults.delay_seconds()
        if delay:
            time.sleep(delay)

        handler_name = self._route(method, path)
        if self.server.sim.account.gated and path.startswith(GATED_PATH_PREFIX):
            # No enterprise verification: elastic-deployment routes refuse, the rest work.
            raise ApiError("BadRequest", GATED_MSG)
        if method == "GET":
            if body.strip():
                raise ApiError("RequestParameterIsWrong", "请求参数错误：GET 请求的参数应放在查询字符串中")
            params = query
        else:
            params = self._parse_json(body)
        if (method, path) in WRITE_ROUTES:
            commit_delay = faults.commit_delay()
            if commit_delay:
                time.sleep(commit_delay)  # the write lands after this, whether the client waits or not
        data = getattr(self.server.api, handler_name)(params)

        if (method, path) == CREATE_ROUTE:
            # Committed already: these faults model an answer lost after success.
            if faults.spec.create_slow_seconds:
                time.sleep(faults.spec.create_slow_seconds)
            if faults.fail_committed_create():
                raise ApiError(*FAULT_MESSAGES[503], http_status=503)
        self._send_json(200, envelope("Success", "", data))

    def _route(self, method: str, path: str) -> str:
        # A known path with another method is a 404 too, as Go routers answer by default.
        found = API_ROUTES.get((method, path))
        if found and self.server.dialect in found[1]:
            return found[0]
        raise ApiError("NotFound", "接口不存在", 404)

    # ----- /svc ----------------------------------------------------------------------------

    def _handle_service(self, method: str, path: str, body: bytes) -> None:
        if method not in ("GET", "POST"):
            self._send_json(405, {"error": "method not allowed"})
            return
        _, _, container_uuid, *rest = path.split("/", 3)
        subpath = "/" + (rest[0] if rest else "")
        # service_6006/6008_port_url point at /svc/<uuid>/p6006 and /p6008: each is the root
        # of the same service, so <url>/health is the health check whichever URL a client took.
        port_prefix = re.match(r"^/p(6006|6008)(?=/|$)", subpath)
        if port_prefix:
            subpath = subpath[port_prefix.end():] or "/"
        world = self.server.sim.world
        with world.current():
            try:
                container = world.container(container_uuid)
            except NotFound:
                container = None
            if container is None or container.status != lc.RUNNING:
                running = None
            else:
                running = container
                machine = world.machines[container.machine_id]
                latency, concurrency = machine.latency_seconds, machine.service_concurrency
                timing, block_tokens, cache_blocks = Timing.of(machine), machine.cache_block_tokens, machine.prefix_cache_blocks
        if running is None:
            if container is None:
                self._send_json(404, {"error": "no such container"})
            else:  # like the platform's proxy in front of a stopped container
                self._send(502, BAD_GATEWAY_PAGE.encode(), "text/html")
            return
        if subpath == "/metrics" and method == "GET":
            # A model server's metrics answer at once, however busy its GPU is.
            active, queued = self.server.service_load_of(running.uuid)
            cache = self.server.sim.prefix_cache(running.uuid).stats()
            page = VLLM_METRICS_PAGE.format(model=SIM_MODEL, running=active, waiting=queued,
                                            queries=cache["prompt_tokens"], hits=cache["cached_tokens"])
            self._send(200, page.encode(), "text/plain; version=0.0.4; charset=utf-8")
            return
        completion = None
        if subpath in OPENAI_ROUTES and method == "POST":
            try:
                completion = self._completion_request(body, chat=subpath == "/v1/chat/completions")
            except ApiError as error:
                self._send_json(400, {"error": {"message": error.msg, "type": "invalid_request_error"}})
                return
        slot = self.server.sim.service_slot(running.uuid, concurrency)
        self.server.count_service(running.uuid, waiting=1)
        try:
            acquired = slot is None or slot.acquire(timeout=SERVICE_QUEUE_TIMEOUT_SECONDS)
        finally:
            self.server.count_service(running.uuid, waiting=-1)
        if not acquired:
            # A gateway gives up on an upstream that never picks the request up.
            self._send(504, GATEWAY_TIMEOUT_PAGE.encode(), "text/html")
            return
        self.server.count_service(running.uuid, running=1)
        try:
            if completion is not None:
                # Prefill starts once the request has its slot on the GPU.
                prompt = completion["prompt"]
                cached = self.server.sim.prefix_cache(running.uuid).admit(prompt, block_tokens, cache_blocks)
                first = timing.first_token_seconds(len(prompt), cached)
                usage = {"prompt_tokens": len(prompt), "completion_tokens": completion["tokens"],
                         "total_tokens": len(prompt) + completion["tokens"],
                         "prompt_tokens_details": {"cached_tokens": cached}}
                self._serve_completion(subpath, completion, running, (first, timing.decode_seconds_per_token), usage)
                return
            time.sleep(latency)  # outside the lock: a slow host must not stall the whole API
        finally:
            self.server.count_service(running.uuid, running=-1)
            if slot is not None:
                slot.release()

        if subpath == "/health":
            self._send_json(200, {"ok": True})
        elif subpath == "/files":
            self._serve_files(method, running, body)
        else:
            self._send_json(200, {
                "container_uuid": running.uuid, "machine_id": running.machine_id,
                "gpu_name": running.gpu_name, "path": subpath,
                "port": int(port_prefix.group(1)) if port_prefix else None,
                "served_at": world.clock.timestamp(world.clock.now()),
            })

    def _completion_request(self, body: bytes, chat: bool) -> dict[str, Any]:
        params = self._parse_json(body, http_status=400)
        tokens = params.get("max_tokens", params.get("max_completion_tokens", DEFAULT_COMPLETION_TOKENS))
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_COMPLETION_TOKENS:
            raise ApiError("InvalidRequest", f"max_tokens must be an integer 1..{MAX_COMPLETION_TOKENS}", 400)
        stream_options = params.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        return {"tokens": tokens, "stream": params.get("stream") is True, "include_usage": include_usage,
                "model": str(params.get("model") or SIM_MODEL), "prompt": prompt_tokens(params, chat)}

    def _still_running(self, container_uuid: str) -> bool:
        world = self.server.sim.world
        with world.current():
            try:
                return world.container(container_uuid).status == lc.RUNNING
            except NotFound:
                return False

    def _serve_completion(self, subpath: str, request: dict[str, Any], container: Container,
                          delays: tuple[float, float], usage: dict[str, Any]) -> None:
        """An OpenAI answer of `tokens` tokens: the first after delays[0] (time to first
        token), each next after delays[1] (a decode step); `usage` reports the prompt's
        tokens and how many of them the prefix cache held (llm.py).

        Streamed: server-sent events in chunked encoding, one event per token (then, with
        `stream_options.include_usage`, one with `usage` and no choices), then `data: [DONE]`.
        If the container stops mid-answer the connection is cut without the final chunk, as
        when a model server's process dies.
        """
        chat = subpath == "/v1/chat/completions"
        created = int(time.time())
        answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid_lib.uuid4().hex[:12]}"
        words = [f" tok{i}" for i in range(request["tokens"])]
        base = {"id": answer_id, "created": created, "model": request["model"], "system_fingerprint": container.uuid}
        steps = [delays[0]] + [delays[1]] * (len(words) - 1)
        if not request["stream"]:
            for step in steps:
                time.sleep(step)
                if not self._still_running(container.uuid):
                    self.close_connection = True
                    return
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if chat
                      else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
            self._send_json(200, {**base, "object": "chat.completion" if chat else "text_completion",
                                  "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kind = "chat.completion.chunk" if chat else "text_completion"
        for index, (word, step) in enumerate(zip(words, steps)):
            time.sleep(step)
            if not self._still_running(container.uuid):
                self.close_connection = True  # no terminating chunk: the client sees a cut stream
                return
            last = index == len(words) - 1
            if chat:
                delta = {"role": "assistant", "content": word} if index == 0 else {"content": word}
                choice = {"index": 0, "delta": delta, "finish_reason": "length" if last else None}
            else:
                choice = {"index": 0, "text": word, "logprobs": None, "finish_reason": "length" if last else None}
            self._write_event({**base, "object": kind, "choices": [choice]})
        if request["include_usage"]:
            self._write_event({**base, "object": kind, "choices": [], "usage": usage})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _write_event(self, document: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(document, allow_nan=False).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        # HTTP/1.1 chunked framing (RFC 9112 7.1): the stdlib server has no writer for it.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _serve_files(self, method: str, container: Container, body: bytes) -> None:
        """GET lists the container's files; POST {path: content} writes some."""
        world = self.server.sim.world
        with world.lock:
            if method == "POST":
                try:
                    updates = self._parse_json(body, http_status=400)
                except ApiError as error:
                    self._send_json(400, {"error": error.msg})
                    return
                written = {**container.files, **{str(k): str(v) for k, v in updates.items()}}
                size = sum(len(k) + len(v) for k, v in written.items())
                if len(written) > MAX_FILES_PER_CONTAINER or size > MAX_FILE_BYTES_PER_CONTAINER:
                    self._send_json(413, {"error": f"container storage full: at most {MAX_FILES_PER_CONTAINER} files, "
                                                   f"{MAX_FILE_BYTES_PER_CONTAINER} bytes per container"})
                    return
                container.files = written
            files = dict(container.files)
        self._send_json(200, {"files": files})

    # ----- /_sim ---------------------------------------------------------------------------

    def _handle_control(self, method: str, path: str, body: bytes) -> None:
        try:  # authenticated in _dispatch
            params = self._parse_json(body, http_status=400) if method != "GET" else {}
            data = self.server.sim.control(method, path, params)
        except ApiError as error:
            self._send_json(error.http_status, envelope(error.code, error.msg))
            return
        self._send_json(200, envelope("Success", "", data))
