"""`Simulator`: the in-process handle on a running simulated AutoDL API."""

from __future__ import annotations

import json
import math
import threading
from collections import deque
import time
from pathlib import Path
from typing import Any, Callable

from .account import Account
from .routes import Api, ApiError
from .clock import SimClock
from .cluster import LLM_SETTINGS, llm_setting_problems, llm_settings, load_cluster, vendor_gpu_name, with_vendor_names
from .faults import FaultInjector, FaultSpec
from .lifecycle import RUNNING
from .llm import PrefixCache
from .server import BodyNotJson, SimHTTPServer, loads_body
from .world import NotFound, World

# How often the background ticker moves the world forward (real seconds). Requests also
# bring it up to date, so this only bounds how stale an idle simulator's state gets.
TICK_SECONDS = 0.05
# How often the HTTP loop checks for shutdown (real seconds); keeps stop() quick.
SERVE_POLL_SECONDS = 0.05
# wait_until() re-checks its predicate this often (real seconds).
WAIT_POLL_SECONDS = 0.01
# Speed used when none is given: one real second is a simulated minute, so a 20 s image
# pull takes a third of a second and a demo stays watchable.
DEFAULT_SPEED = 60.0
DEFAULT_TOKEN = "sim-token"
# The request log keeps this many most recent /api requests: far more than any test or
# bench inspects, while a poller running for days cannot grow the process without bound.
REQUEST_LOG_LIMIT = 10_000
# A logged request keeps its parsed body only up to this size (a create is ~1-2 KB); a
# larger one is logged as its size and first bytes, so the log stays bounded in bytes too.
REQUEST_LOG_BODY_BYTES = 4096
REQUEST_LOG_HEAD_CHARS = 200
# One advance may jump at most a year of simulated time: far beyond any test, and the
# clock's timestamps stay formattable (1e300 s would break every listing for good).
MAX_ADVANCE_SECONDS = 366 * 86400.0
# Containers containers() renders per hold of the world lock (about 7 ms of work).
RENDER_CHUNK = 1000
DIALECTS = ("private", "public", "both")
STOCK_SHAPES = ("list", "dict")
GPU_NAMINGS = ("vendor", "cluster")


class UnknownObject(KeyError):
    """A control named a machine or container the simulator does not have; the message is
    what the /_sim answer says (a KeyError, so in-process callers catch it as before)."""


class Simulator:
    """A local AutoDL elastic-deployment API on 127.0.0.1.

    Args:
        token: the developer token clients must send as `Authorization`.
        cluster: None (the bundled default cluster), a path to a cluster file, or a dict.
        speed: simulated seconds per real second.
        seed: seeds ids, passwords, crash timing and fault decisions.
        faults: a fault SPEC string or dict (see `simulator.faults`), or None.
        host, port: where to listen; port 0 picks a free port.
        dialect: "both" (default) accepts private and public templates; "public" requires
            `dc_list` + CUDA range; "private" follows what a live private cluster showed
            (facts §15): it 404s public-only routes, its deployment and container views carry
            no public-only fields, and it accepts a create's `dc_list` / `cuda_v_from` /
            `cuda_v_to` but ignores them (the upstream skill sends them on every create and
            reports a working private create; the private cloud has no regions, and its
            template's CUDA is `cuda_v`).
        stock_shape: "list" (single-key objects) or "dict" (keyed by name, with gpu_name)
            for GET /api/v1/dev/machine/gpu_stock. Default: "dict" for the private dialect
            (what a live private cluster answers), "list" otherwise.
        gpu_names: "vendor" names every GPU the way the private cloud reports it
            ("RTX 4090" in the cluster file becomes "NVIDIA GeForce RTX 4090"); "cluster"
            keeps the cluster file's names. Default: "vendor" for the private dialect,
            "cluster" otherwise. Test controls (occupy) accept either spelling.
        verbose: log every HTTP request to stderr.
        balance_yuan: the wallet's starting balance (default 500 yuan); running containers
            draw it down as simulated time passes.
        blocked_yuan: money frozen inside that balance (`blocked_asset`, default 0): still
            counted in `assets`, but not available.
        gated: an account without enterprise verification: elastic-deployment routes answer
            BadRequest 无当前资源访问权限; images, stock, wallet and WeChat still work.
        service_ports: give every container's service its own port on `host` (URLs without
            a path, like the private cloud's proxy_host:custom_port), so a proxy such as
            HAProxy can address each replica as host:port. True: ports the system picks;
            (low, high): ports from that range (a free one per container; the system picks
            once the range is used up). Default: one shared port, with /svc/<container_uuid>
            paths.

    Test controls below are thread-safe and may be called while clients are connected.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, cluster: str | Path | dict | None = None,
                 speed: float = DEFAULT_SPEED, seed: int = 0, faults: str | dict | None = None,
                 *, host: str = "127.0.0.1", port: int = 0, dialect: str = "both",
                 stock_shape: str | None = None, gpu_names: str | None = None, verbose: bool = False,
                 balance_yuan: float | None = None, gated: bool = False,
                 blocked_yuan: float | None = None,
                 service_ports: bool | tuple[int, int] = False) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect 只能是 {' | '.join(DIALECTS)}")
        if stock_shape is None:
            stock_shape = "dict" if dialect == "private" else "list"
        if stock_shape not in STOCK_SHAPES:
            raise ValueError(f"stock_shape 只能是 {' | '.join(STOCK_SHAPES)}")
        if gpu_names is None:
            gpu_names = "vendor" if dialect == "private" else "cluster"
        if gpu_names not in GPU_NAMINGS:
            raise ValueError(f"gpu_names 只能是 {' | '.join(GPU_NAMINGS)}")
        if not token or token != token.strip():
            raise ValueError("token 不能为空, 首尾也不能有空白")
        self.token = token
        self.host, self.port = host, port
        self.dialect = dialect
        self.verbose = verbose
        self.clock = SimClock(speed)
        self.stock_shape, self.gpu_names = stock_shape, gpu_names
        spec = load_cluster(cluster)
        self.world = World(with_vendor_names(spec) if gpu_names == "vendor" else spec, self.clock, seed)
        self.fault_spec = FaultSpec.parse(faults)
        self._faults = FaultInjector(self.fault_spec, seed)
        self.account = Account(gated=bool(gated))
        if balance_yuan is not None or blocked_yuan is not None:
            self.set_wallet(balance_yuan=balance_yuan, blocked_yuan=blocked_yuan)
        if isinstance(service_ports, tuple):
            low, high = service_ports
            if not 1 <= low <= high <= 65535:
                raise ValueError("service_ports 范围必须满足 1 <= low <= high <= 65535")
        self.service_ports = service_ports
        self._service_servers: dict[str, tuple[SimHTTPServer, threading.Thread]] = {}
        self._api = Api(self.world, dialect, stock_shape, lambda: self.url, self.account,
                        self.service_address if service_ports else None)
        self._requests: deque[tuple[str, str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self._requests_lock = threading.Lock()
        # container uuid -> semaphore bounding how many /svc requests it serves at once
        self._service_slots: dict[str, threading.BoundedSemaphore] = {}
        self._service_slots_lock = threading.Lock()
        # container uuid -> its model server's prefix cache (llm.py), while it runs
        self._prefix_caches: dict[str, PrefixCache] = {}
        self._prefix_caches_lock = threading.Lock()  # never held while taking the world's
        self._server: SimHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.url = ""

    # ----- lifecycle -----------------------------------------------------------------------

    def start(self) -> "Simulator":
        """Bind and serve in daemon threads; returns self."""
        if self._server is not None:
            return self
        self._server = SimHTTPServer((self.host, self.port), self, self._api, self._faults, self.dialect)
        bound_host, bound_port = self._server.server_address[:2]
        self.port = bound_port
        self.url = f"http://{bound_host}:{bound_port}"
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(SERVE_POLL_SECONDS,),
                             name="sim-http", daemon=True),
            threading.Thread(target=self._tick_forever, name="sim-ticker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the threads; safe to call twice."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join()
        with self._service_slots_lock:
            service_servers, self._service_servers = list(self._service_servers.values()), {}
        for server, thread in service_servers:
            server.shutdown()
            server.server_close()
            thread.join()
        self._server = None
        self._threads = []

    def service_address(self, container_uuid: str) -> str:
        """With service_ports: the base URL of the container's own service port (opened on first use)."""
        with self._service_slots_lock:
            known = self._service_servers.get(container_uuid)
            if known is None:
                server = self._service_server(container_uuid)
                thread = threading.Thread(target=server.serve_forever, args=(SERVE_POLL_SECONDS,),
                                          name=f"sim-svc-{container_uuid}", daemon=True)
                thread.start()
                known = self._service_servers[container_uuid] = (server, thread)
        host, port = known[0].server_address[:2]
        return f"http://{host}:{port}"

    def _service_server(self, container_uuid: str) -> SimHTTPServer:
        """A server for one container's service: on a free port of the range, else one the system picks."""
        candidates = [0]
        if isinstance(self.service_ports, tuple):
            taken = {server.server_address[1] for server, _ in self._service_servers.values()}
            candidates = [port for port in range(self.service_ports[0], self.service_ports[1] + 1) if port not in taken] + [0]
        for port in candidates:
            try:
                return SimHTTPServer((self.host, port), self, self._api, self._faults, self.dialect,
                                     container_uuid=container_uuid)
            except OSError:
                if port == 0:
                    raise
        raise AssertionError("unreachable: port 0 either binds or raises")

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _tick_forever(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            self.world.settle()

    # ----- test controls ---------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Jump simulated time forward by `seconds` (0..MAX_ADVANCE_SECONDS) and run everything that falls due."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or not 0 <= seconds <= MAX_ADVANCE_SECONDS:
            raise ValueError(f"seconds 必须是 0..{MAX_ADVANCE_SECONDS:.0f} 之间的有限数 (最多一年)")
        self.clock.advance(seconds)
        self.world.settle()

    def occupy(self, gpu_name: str, count: int, seconds: float | None = None) -> int:
        """Background tenants take up to `count` idle GPUs of `gpu_name` (stock drops) until
        `seconds` of simulated time pass, or forever when None. Returns how many they got."""
        if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
            raise ValueError("seconds 必须是正的有限数 (不给则一直占用)")
        if self.gpu_names == "vendor":
            gpu_name = vendor_gpu_name(gpu_name)  # "RTX 4090" and its vendor spelling are one card
        return self.world.occupy(gpu_name, count, seconds)

    def release_occupied(self) -> None:
        """Give back every GPU held by background tenants."""
        self.world.release_occupied()
        self.world.settle()

    def crash_container(self, container_uuid: str, exit_code: int = 1) -> None:
        """Kill a live container as if its process died with `exit_code`."""
        try:
            crashed = self.world.crash(container_uuid, exit_code)
        except NotFound:
            raise UnknownObject(f"容器 {container_uuid} 不存在") from None
        self.world.settle()
        if not crashed:
            raise ValueError(f"容器 {container_uuid} 正在停止或已经停止")

    def set_machine_faulty(self, machine_id: str, faulty: bool = True) -> None:
        """Containers that reach `running` on a faulty machine crash 5-15 simulated s later."""
        with self.world.lock:
            self._machine(machine_id).faulty = bool(faulty)

    def set_machine_latency(self, machine_id: str, seconds: float) -> None:
        """Real seconds the machine's /svc endpoints wait before answering."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("seconds 必须是 >= 0 的有限数")
        with self.world.lock:
            self._machine(machine_id).latency_seconds = float(seconds)

    def set_machine_concurrency(self, machine_id: str, requests: int) -> None:
        """How many /svc requests one container on the machine serves at once (0 = no limit);
        the others wait their turn, the way a GPU runs one batch while the next queues."""
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
            raise ValueError("requests 必须是 >= 0 的整数")
        with self.world.lock:
            self._machine(machine_id).service_concurrency = requests
            on_machine = [c.uuid for c in self.world.containers.values() if c.machine_id == machine_id]
        with self._service_slots_lock:  # new requests pick up the new limit
            for uuid in on_machine:
                self._service_slots.pop(uuid, None)

    def set_machine_llm(self, machine_id: str, **settings: Any) -> None:
        """Change the machine's model-server timing and prefix cache (cluster file keys
        ttft_seconds, prefill_seconds_per_token, decode_seconds_per_token, prefix_cache_blocks,
        cache_block_tokens); the next request on its containers uses them."""
        unknown = set(settings) - set(LLM_SETTINGS)
        if unknown:
            raise ValueError(f"未知字段 {', '.join(sorted(unknown))} (可用: {', '.join(LLM_SETTINGS)})")
        problems = llm_setting_problems(settings, machine_id)
        if problems:
            raise ValueError("; ".join(problems))
        with self.world.lock:
            machine = self._machine(machine_id)
            for key, value in llm_settings(settings).items():
                setattr(machine, key, value)

    def prefix_cache(self, container_uuid: str) -> PrefixCache:
        """The container's prefix cache (created on first use)."""
        with self._prefix_caches_lock:
            cache = self._prefix_caches.get(container_uuid)
            if cache is not None:
                return cache
            known = list(self._prefix_caches)
        # A cache dies with its container's process: drop those of shut-down containers.
        with self.world.lock:
            gone = [uuid for uuid in known if not self.world.containers[uuid].is_live]
        with self._prefix_caches_lock:
            for uuid in gone:
                self._prefix_caches.pop(uuid, None)
            return self._prefix_caches.setdefault(container_uuid, PrefixCache())

    def prefix_cache_stats(self) -> list[dict[str, Any]]:
        """Per container that served an OpenAI request and still runs: requests, prompt_tokens,
        cached_tokens, hit_rate (cached / prompt tokens) and cached_blocks, oldest first."""
        with self._prefix_caches_lock:
            caches = dict(self._prefix_caches)
        with self.world.current():
            running = {uuid: self.world.containers[uuid].machine_id for uuid in caches
                       if self.world.containers[uuid].status == RUNNING}
        stats = [{"container_uuid": uuid, "machine_id": running[uuid], **cache.stats()}
                 for uuid, cache in caches.items() if uuid in running]
        return [entry for entry in stats if entry["requests"]]  # /metrics reads alone do not count

    def service_slot(self, container_uuid: str, concurrency: int) -> threading.BoundedSemaphore | None:
        """The semaphore a /svc request of this container holds while it is served (None: no limit)."""
        if concurrency <= 0:
            return None
        with self._service_slots_lock:
            slot = self._service_slots.get(container_uuid)
            if slot is None:
                slot = self._service_slots[container_uuid] = threading.BoundedSemaphore(concurrency)
            return slot

    def set_faults(self, faults: str | dict | None) -> None:
        """Replace the fault SPEC while serving (e.g. an outage: "error_rate=1", later None)."""
        spec = FaultSpec.parse(faults)
        self.fault_spec = spec
        self._faults.spec = spec

    def set_wallet(self, balance_yuan: float | None = None, voucher_yuan: float | None = None,
                   wechat_bound: bool | None = None, gated: bool | None = None,
                   blocked_yuan: float | None = None) -> None:
        """Set the balance as of now (past spend is kept in `accumulate`), the frozen part of
        it (`blocked_asset`: counted in `assets`, not spendable), vouchers, whether WeChat is
        bound, and the enterprise gate."""
        with self.world.current():
            if balance_yuan is not None:
                if not math.isfinite(balance_yuan):
                    raise ValueError("balance_yuan 必须是有限数")
                spent = self.account.spend_units(self.world.containers.values(), self.world.now)
                self.account.balance_units = round(balance_yuan * 1000 + spent)
            if blocked_yuan is not None:
                if not math.isfinite(blocked_yuan) or blocked_yuan < 0:
                    raise ValueError("blocked_yuan 必须是 >= 0 的有限数")
                self.account.blocked_units = round(blocked_yuan * 1000)
            if voucher_yuan is not None:
                if not math.isfinite(voucher_yuan) or voucher_yuan < 0:
                    raise ValueError("voucher_yuan 必须是 >= 0 的有限数")
                self.account.voucher_units = round(voucher_yuan * 1000)
            if wechat_bound is not None:
                self.account.wechat_bound = bool(wechat_bound)
            if gated is not None:
                self.account.gated = bool(gated)

    def wallet(self) -> dict[str, Any]:
        """The wallet as the balance endpoint returns it (yuan x 1000)."""
        return self._api.wallet_balance({})

    def wechat_messages(self) -> list[dict[str, Any]]:
        """WeChat messages accepted so far, oldest first (`at`: simulated seconds)."""
        return self.account.message_list()

    def machines(self) -> list[dict[str, Any]]:
        """Every machine with its configuration plus `free_gpus` and `blacklisted`."""
        with self.world.current():
            return [{**m.describe(), "free_gpus": self.world.free_gpus(m),
                     "blacklisted": m.machine_id in self.world.blacklist}
                    for m in self.world.machines.values()]

    def deployments(self) -> list[dict[str, Any]]:
        """Live (not deleted) deployments as the list endpoint shows them, oldest first."""
        with self.world.current():
            return [self._api._deployment_view(d) for d in self.world.deployments.values() if not d.deleted]

    def containers(self, deployment_uuid: str | None = None) -> list[dict[str, Any]]:
        """Every container (released ones too), oldest first, shaped like the container list,
        plus simulator-only keys `exit_code`, `stop_reason`, `reused_from` and `files`."""
        with self.world.current():
            chosen = (list(self.world.containers.values()) if deployment_uuid is None
                      else self.world.containers_of(deployment_uuid))
        views: list[dict[str, Any]] = []
        for start in range(0, len(chosen), RENDER_CHUNK):
            with self.world.lock:  # a chunk per hold: 10,000 views at once held it ~75 ms
                views += [{**self._api.container_view(c), "exit_code": c.exit_code,
                           "stop_reason": c.stop_reason, "reused_from": c.reused_from, "files": dict(c.files)}
                          for c in chosen[start:start + RENDER_CHUNK]]
        return views

    def request_log(self) -> list[tuple[str, str, Any]]:
        """The last REQUEST_LOG_LIMIT authenticated /api requests, oldest first, as (method,
        path, params): the parsed JSON body, or for a GET its query parameters (None when there
        were none, or the body was not JSON); a body over REQUEST_LOG_BODY_BYTES is
        {"truncated": true, "size": bytes, "head": first characters}."""
        with self._requests_lock:
            return list(self._requests)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll `predicate()` until it returns something truthy (returned) or raise
        TimeoutError after `timeout` real seconds (generous by default: a loaded CI machine
        can take seconds for what takes 0.1 s here, and polling keeps the normal case fast)."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(WAIT_POLL_SECONDS)

    def now(self) -> float:
        """Simulated seconds since the simulator was created."""
        return self.clock.now()

    # ----- helpers used by the HTTP server ---------------------------------------------------

    def _machine(self, machine_id: str):
        try:
            return self.world.machines[machine_id]
        except KeyError:
            raise UnknownObject(f"机器 {machine_id} 不存在") from None

    def record_request(self, method: str, path: str, body: bytes, query: dict) -> None:
        if method == "GET":
            params: Any = query or None
        elif len(body) > REQUEST_LOG_BODY_BYTES:
            params = {"truncated": True, "size": len(body),
                      "head": body[:REQUEST_LOG_HEAD_CHARS].decode("utf-8", "replace")}
        else:
            try:
                params = loads_body(body) if body.strip() else None
            except BodyNotJson:
                params = None
        with self._requests_lock:
            self._requests.append((method, path, params))

    def control(self, method: str, path: str, params: dict) -> Any:
        """Serve a /_sim route (see CONTROL_ROUTES)."""
        name = CONTROL_ROUTES.get((method, path))
        if name is None:
            raise ApiError("NotFound", "模拟器控制接口不存在", 404)
        try:
            return getattr(self, name)(params)
        except UnknownObject as exc:
            raise ApiError("RequestParameterIsWrong", f"请求参数错误：{exc.args[0]}", 400) from None
        except KeyError as exc:  # control_fields names missing fields; this is a safety net
            detail = exc.args[0] if exc.args else ""
            raise ApiError("RequestParameterIsWrong", f"请求参数错误：缺少字段或对象不存在 {detail}", 400) from None
        except (ValueError, TypeError) as exc:
            raise ApiError("RequestParameterIsWrong", f"请求参数错误：{exc}", 400) from None

    def _control_state(self, params: dict) -> dict:
        return {"now": self.now(), "machines": self.machines(),
                "deployments": self.deployments(), "containers": self.containers()}

    def _control_requests(self, params: dict) -> list:
        return [list(entry) for entry in self.request_log()]

    def _control_advance(self, params: dict) -> dict:
        self.advance(control_fields(params, {"seconds": NUMBER}, maxima={"seconds": None})["seconds"])  # range: advance
        return {"now": self.now()}

    def _control_occupy(self, params: dict) -> dict:
        fields = control_fields(params, {"gpu_name": TEXT, "count": INTEGER}, {"seconds": NUMBER},
                                maxima={"count": MAX_CONTROL_COUNT, "seconds": MAX_ADVANCE_SECONDS})
        return {"occupied": self.occupy(fields["gpu_name"], fields["count"], fields.get("seconds"))}

    def _control_release(self, params: dict) -> None:
        control_fields(params, {})
        self.release_occupied()

    def _control_crash(self, params: dict) -> None:
        fields = control_fields(params, {"container_uuid": TEXT}, {"exit_code": INTEGER}, maxima={"exit_code": 255})
        self.crash_container(fields["container_uuid"], fields.get("exit_code", 1))

    def _control_faulty(self, params: dict) -> None:
        fields = control_fields(params, {"machine_id": TEXT}, {"faulty": BOOLEAN})
        self.set_machine_faulty(fields["machine_id"], fields.get("faulty", True))

    def _control_latency(self, params: dict) -> None:
        fields = control_fields(params, {"machine_id": TEXT, "seconds": NUMBER}, maxima={"seconds": MAX_LATENCY_SECONDS})
        self.set_machine_latency(fields["machine_id"], fields["seconds"])

    def _control_concurrency(self, params: dict) -> None:
        fields = control_fields(params, {"machine_id": TEXT, "requests": INTEGER}, maxima={"requests": MAX_CONTROL_COUNT})
        self.set_machine_concurrency(fields["machine_id"], fields["requests"])

    def _control_llm(self, params: dict) -> dict:
        machine_id = control_fields({"machine_id": params.get("machine_id")}, {"machine_id": TEXT})["machine_id"]
        settings = {key: value for key, value in params.items() if key != "machine_id"}
        self.set_machine_llm(machine_id, **settings)  # every setting's type and range checked there
        return {key: value for key, value in self._machine(machine_id).describe().items() if key in LLM_SETTINGS}

    def _control_prefix_cache(self, params: dict) -> list:
        return self.prefix_cache_stats()

    def _control_wallet(self, params: dict) -> dict:
        fields = control_fields(params, {}, {"balance_yuan": NUMBER, "voucher_yuan": NUMBER, "blocked_yuan": NUMBER,
                                             "wechat_bound": BOOLEAN, "gated": BOOLEAN},
                                minima={"balance_yuan": -MAX_WALLET_YUAN},
                                maxima={"balance_yuan": MAX_WALLET_YUAN, "voucher_yuan": MAX_WALLET_YUAN,
                                        "blocked_yuan": MAX_WALLET_YUAN})
        self.set_wallet(fields.get("balance_yuan"), fields.get("voucher_yuan"), blocked_yuan=fields.get("blocked_yuan"),
                        wechat_bound=fields.get("wechat_bound"), gated=fields.get("gated"))
        return self.wallet()

    def _control_wechat(self, params: dict) -> list:
        return self.wechat_messages()


# What a /_sim control field may be. JSON's own types, strictly: true is not a number, "10"
# is not a number, "no" is not false (the API's Go decoder is as strict).
NUMBER, INTEGER, BOOLEAN, TEXT = "number", "integer", "boolean", "string"
# Bounds of the controls' numbers: a year of latency or a million GPUs is already past any test.
MAX_CONTROL_COUNT = 1_000_000
MAX_LATENCY_SECONDS = 3600.0
MAX_WALLET_YUAN = 1e9


def _has_kind(value: Any, kind: str) -> bool:
    if kind == BOOLEAN:
        return isinstance(value, bool)
    if kind == TEXT:
        return isinstance(value, str) and bool(value)
    if isinstance(value, bool):
        return False
    if kind == INTEGER:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def control_fields(params: dict, required: dict[str, str], optional: dict[str, str] | None = None, *,
                   minima: dict[str, float] | None = None, maxima: dict[str, float | None] | None = None) -> dict[str, Any]:
    """The fields of a control's body, each of its JSON type and within [minimum, maximum]
    (numbers default to 0..MAX_CONTROL_COUNT); an unknown, missing or mistyped field is a ValueError naming it
    (400 RequestParameterIsWrong)."""
    kinds = {**required, **(optional or {})}
    unknown = sorted(set(params) - set(kinds))
    if unknown:
        raise ValueError(f"未知字段 {', '.join(unknown)} (可用: {', '.join(kinds) or '无'})")
    missing = [key for key in required if key not in params]
    if missing:
        raise ValueError(f"缺少字段 {', '.join(missing)}")
    fields = {}
    for key, value in params.items():
        kind = kinds[key]
        if value is None and key not in required:
            continue
        if not _has_kind(value, kind):
            shown = json.dumps(value, ensure_ascii=False, allow_nan=False)[:40]
            raise ValueError(f"{key} 必须是 JSON {kind}{' (有限数)' if kind == NUMBER else ''}, 收到 {shown}")
        if kind in (NUMBER, INTEGER):
            low, high = (minima or {}).get(key, 0), (maxima or {}).get(key, MAX_CONTROL_COUNT)
            if high is not None and not low <= value <= high:  # None: the method called checks the range
                raise ValueError(f"{key} 必须在 {low:g}..{high:g} 之间, 收到 {value:g}")
        fields[key] = value
    return fields


# /_sim routes: the same controls for a simulator running in another process.
CONTROL_ROUTES = {
    ("GET", "/_sim/state"): "_control_state",
    ("GET", "/_sim/requests"): "_control_requests",
    ("POST", "/_sim/advance"): "_control_advance",
    ("POST", "/_sim/occupy"): "_control_occupy",
    ("POST", "/_sim/release"): "_control_release",
    ("POST", "/_sim/crash"): "_control_crash",
    ("POST", "/_sim/faulty"): "_control_faulty",
    ("POST", "/_sim/latency"): "_control_latency",
    ("POST", "/_sim/concurrency"): "_control_concurrency",
    ("POST", "/_sim/llm"): "_control_llm",
    ("GET", "/_sim/prefix_cache"): "_control_prefix_cache",
    ("POST", "/_sim/wallet"): "_control_wallet",
    ("GET", "/_sim/wechat"): "_control_wechat",
}
