"""HAProxy as the gateway: a complete haproxy.cfg, and a backend kept in sync at runtime.

HAProxy does the proxying (leastconn, health checks, retries with redispatch, passive
ejection, metrics); this module only tells it which replicas exist, through the runtime
API on its stats socket (`add server`, `set server ... state`, `del server`). Server names
are the container UUIDs, so `show stat` and the Prometheus metrics name replicas the way
every other tool here does.

Dynamic servers do not inherit `default-server` (HAProxy 2.6), so the check and ejection
options are passed with every `add server` (`server_options`); the config writer prints the
matching discover_services command.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

from ..core.output import Progress

# The runtime API answers in microseconds; 5 s tells a stuck HAProxy from a busy one.
RUNTIME_TIMEOUT_SECONDS = 5.0
# Health checks: a model server's /health answers quickly even under load; every 2 s,
# down after 3 misses (~6 s), back after 2 good answers.
DEFAULT_CHECK_INTER = "2s"
DEFAULT_CHECK_FALL = 3
DEFAULT_CHECK_RISE = 2
# Passive ejection: this many consecutive failed requests (5xx, resets) mark a replica down
# until its health check passes again — faster than waiting for the next checks.
DEFAULT_ERROR_LIMIT = 10
SERVER_NAME_PATTERN = re.compile(r"[^A-Za-z0-9_.:-]")
# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced/inherited/config/resolution maintenance, drain.
ADMIN_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20
ADMIN_DRAIN_BITS = 0x08 | 0x10


def server_options(check_inter: str = DEFAULT_CHECK_INTER, fall: int = DEFAULT_CHECK_FALL, rise: int = DEFAULT_CHECK_RISE,
                   error_limit: int = DEFAULT_ERROR_LIMIT, maxconn: int = 0) -> str:
    """The per-server options every replica gets (config `default-server` and `add server`)."""
    options = f"check inter {check_inter} fall {fall} rise {rise} observe layer7 error-limit {error_limit} on-error mark-down"
    return options + (f" maxconn {maxconn}" if maxconn else "")


DEFAULT_SERVER_OPTIONS = server_options()


def server_name(container_uuid: str) -> str:
    """The HAProxy server name of a replica: its container UUID (only HAProxy's name characters)."""
    return SERVER_NAME_PATTERN.sub("_", container_uuid)


@dataclass(frozen=True)
class ServerAddress:
    address: str  # an IP (HAProxy's runtime API takes no names to resolve)
    port: int
    tls_host: Optional[str]  # SNI / certificate name for https, None for http

    def options(self) -> str:
        if self.tls_host is None:
            return ""
        return f" ssl verify required ca-file @system-ca sni str({self.tls_host}) check-sni {self.tls_host}"


def server_address(url: str) -> ServerAddress:
    """Where HAProxy connects for a service URL; ValueError when HAProxy cannot reach it as is.

    HAProxy forwards the client's path unchanged, so a URL whose replica is selected by a
    path prefix (e.g. the simulator's shared /svc/<uuid> address) cannot be a server.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"不是 http(s) 地址: {url}")
    problem = path_problem(url)
    if problem:
        raise ValueError(problem)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as problem:
            raise ValueError(f"解析不了主机名 {host}: {problem}") from None
        infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first: what most proxies listen on
        address = infos[0][4][0]
    return ServerAddress(address, port, host if parts.scheme == "https" else None)


def path_problem(url: str) -> Optional[str]:
    """Why HAProxy cannot use this service URL as a server because of its path, or None."""
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query:
        return f"地址带路径 {parts.path!r}: HAProxy 不能按副本改写路径, 需要每个副本独立的 主机:端口"
    return None


def routing_warning(urls: list[str], replicas: Optional[int] = None) -> Optional[dict[str, str]]:
    """The `warnings` item when some service URLs select the replica by path (HAProxy would answer 503).

    `replicas`: how many replicas there are in all, when `urls` are not all of them.
    """
    unroutable = [url for url in urls if path_problem(url)]
    if not unroutable:
        return None
    total = len(urls) if replicas is None else replicas
    return {
        "code": "haproxy_cannot_route", "path": "services[].url",
        "message": (f"{len(unroutable)}/{total} 个副本的服务地址带路径 (如 {unroutable[0]}): HAProxy 只能按 主机:端口 "
                    "转发, 不能转到这些副本, watcher 会跳过它们; 没有别的副本时前端一直返回 503。"),
        "hint": ("改用 serve_gateway.py (按完整地址转发, 带路径也可以), 或让每个副本有独立的 主机:端口: "
                 "私有云的 service_url (proxy_host:custom_port); 模拟器用 autodl_sim.py --service-ports auto 启动。"),
    }


class RuntimeApiError(RuntimeError):
    """HAProxy refused a command or its socket cannot be reached."""


class RuntimeApi:
    """HAProxy's runtime API on a Unix (or TCP) stats socket: one command per connection."""

    def __init__(self, socket_path: str, timeout: float = RUNTIME_TIMEOUT_SECONDS) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        host, sep, port = self.socket_path.rpartition(":")
        if sep and port.isdigit() and not self.socket_path.startswith("/"):
            return socket.create_connection((host, int(port)), timeout=self.timeout)
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout)
        connection.connect(self.socket_path)
        return connection

    def command(self, line: str) -> str:
        try:
            with self._connect() as connection:
                connection.sendall(line.encode() + b"\n")
                chunks = []
                while True:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as problem:
            raise RuntimeApiError(f"HAProxy 运行时接口 {self.socket_path} 不可用: {problem}") from None
        return b"".join(chunks).decode("utf-8", "replace")

    def servers(self, backend: str) -> dict[str, dict[str, Any]]:
        """name -> {address, port, admin_state, operational_state} from `show servers state`."""
        answer = self.command(f"show servers state {backend}")
        lines = [line for line in answer.splitlines() if line.strip()]
        header = next((line for line in lines if line.startswith("# be_id")), None)
        if header is None:
            raise RuntimeApiError(f"HAProxy 没有 backend {backend!r}: {answer.strip()[:200]}")
        columns = header[2:].split()
        servers = {}
        for line in lines:
            fields = line.split()
            if line.startswith("#") or len(fields) < len(columns):
                continue  # the header, or the format version line ("1")
            row = dict(zip(columns, fields))
            servers[row["srv_name"]] = {
                "address": row["srv_addr"], "port": int(row["srv_port"]),
                "admin_state": int(row["srv_admin_state"]), "operational_state": int(row["srv_op_state"]),
            }
        return servers

    def sessions(self, backend: str) -> dict[str, int]:
        """name -> current sessions (scur) from `show stat`."""
        answer = self.command(f"show stat {backend} 4 -1")
        rows = csv.DictReader(io.StringIO(answer.lstrip("# ")))
        return {row["svname"]: int(row["scur"] or 0) for row in rows if row.get("svname") not in (None, "BACKEND", "FRONTEND")}

    def stats(self, backend: str) -> list[dict[str, str]]:
        answer = self.command(f"show stat {backend} 4 -1")
        return [row for row in csv.DictReader(io.StringIO(answer.lstrip("# "))) if row.get("svname") not in ("BACKEND", "FRONTEND")]

    def check(self, line: str, *expected: str) -> str:
        """Run a command that must answer one of `expected` (or nothing)."""
        answer = self.command(line).strip()
        if answer and not any(text in answer for text in expected):
            raise RuntimeApiError(f"HAProxy 拒绝了 `{line}`: {answer[:300]}")
        return answer


class BackendSync:
    """Keeps one HAProxy backend equal to the registry (a `WatchOptions.sinks` entry).

    - a new replica: `add server <backend>/<uuid> ip:port <options>`, health checks on, ready;
    - a changed URL: `set server ... addr`;
    - `healthy: false` in the registry: drain (finish what it has, nothing new);
    - a replica that left: maintenance at once (no new requests), deleted once its last
      session ends (`del server` refuses while connections remain; retried every cycle).

    While the registry is stale (API unreachable), nothing is removed: the last good set
    stays, as everywhere else. Only servers named after this deployment's containers, or
    added by this process, are touched; other servers in the backend are left alone.
    """

    def __init__(self, api: RuntimeApi, backend: str, deployment_uuid: str, options: str = DEFAULT_SERVER_OPTIONS,
                 progress: Progress | None = None) -> None:
        self.api = api
        self.backend = backend
        self.deployment_uuid = deployment_uuid
        self.options = options
        self.progress = progress or Progress(quiet=True)
        self.added = self.removed = self.drained = self.updated = 0
        self.skipped: dict[str, str] = {}  # replicas in the registry now that HAProxy cannot route to: name -> why
        self.ever_skipped: dict[str, str] = {}  # every replica skipped in this run: name -> its URL
        self.ever_seen: set[str] = set()
        self.last_error: Optional[str] = None
        self._ours: set[str] = set()

    def _mine(self, name: str) -> bool:
        return name in self._ours or name.startswith(f"{self.deployment_uuid}-")

    def __call__(self, document: dict[str, Any]) -> None:
        """Sync once; an HAProxy that is down or restarting is retried on the next registry."""
        try:
            self.sync(document)
        except RuntimeApiError as problem:
            if str(problem) != self.last_error:
                self.progress.log(f"HAProxy 同步失败, 下一轮重试: {problem}")
            self.last_error = str(problem)
            return
        if self.last_error:
            self.progress.log("HAProxy 同步恢复")
        self.last_error = None

    def sync(self, document: dict[str, Any]) -> None:
        desired: dict[str, tuple[ServerAddress, bool, str]] = {}
        skipped: dict[str, str] = {}
        for entry in document.get("services") or []:
            name = server_name(entry["container_uuid"])
            self.ever_seen.add(name)
            try:
                desired[name] = (server_address(entry["url"]), entry.get("healthy") is not False, entry["container_uuid"])
            except ValueError as problem:
                if self.skipped.get(name) != str(problem):
                    self.progress.log(f"HAProxy: 跳过 {entry['container_uuid']}: {problem}")
                    warning = routing_warning([entry["url"]])
                    if warning and not self.ever_skipped:
                        self.progress.log(f"HAProxy: 跳过的副本收不到请求; {warning['hint']}")
                skipped[name] = str(problem)
                self.ever_skipped[name] = entry["url"]
        if not document.get("stale"):  # while stale, the last good view of who is skipped stands
            self.skipped = skipped
        else:
            self.skipped.update(skipped)
        current = self.api.servers(self.backend)
        for name, (address, healthy, uuid) in desired.items():
            server = f"{self.backend}/{name}"
            known = current.get(name)
            if known is None:
                self.api.check(f"add server {server} {address.address}:{address.port} {self.options}{address.options()}",
                               "New server registered")
                self._ours.add(name)
                self.api.check(f"enable health {server}")
                self.api.check(f"set server {server} state {'ready' if healthy else 'drain'}")
                self.added += 1
                self.progress.log(f"HAProxy: 加入 {server} {address.address}:{address.port}")
                continue
            self._ours.add(name)
            if (known["address"], known["port"]) != (address.address, address.port):
                self.api.check(f"set server {server} addr {address.address} port {address.port}", "changed", "no need to change")
                self.updated += 1
            admin = known["admin_state"]
            if healthy and admin & (ADMIN_MAINT_BITS | ADMIN_DRAIN_BITS):
                self.api.check(f"set server {server} state ready")
                self.progress.log(f"HAProxy: 恢复 {server}")
            elif not healthy and not admin & (ADMIN_MAINT_BITS | ADMIN_DRAIN_BITS):
                self.api.check(f"set server {server} state drain")
                self.drained += 1
                self.progress.log(f"HAProxy: 排空 {server} (注册表 healthy=false)")
        if document.get("stale"):
            return
        leaving = [name for name in current if name not in desired and self._mine(name)]
        if not leaving:
            return
        sessions = self.api.sessions(self.backend)
        for name in leaving:
            server = f"{self.backend}/{name}"
            if not current[name]["admin_state"] & ADMIN_MAINT_BITS:
                self.api.check(f"set server {server} state maint")
                self.progress.log(f"HAProxy: 停止向 {server} 转发 (已不在注册表)")
            if sessions.get(name, 0) == 0:
                answer = self.api.command(f"del server {server}").strip()
                if "Server deleted" in answer:
                    self.removed += 1
                    self._ours.discard(name)
                    self.progress.log(f"HAProxy: 删除 {server}")

    def summary(self) -> dict[str, Any]:
        """Counts of the run; `skipped_replicas`: replicas HAProxy could not route to (ever),
        `skipped`: those still in the registry at the end, with why."""
        return {"backend": self.backend, "socket": self.api.socket_path, "added": self.added, "removed": self.removed,
                "drained": self.drained, "address_changes": self.updated,
                "skipped_replicas": len(self.ever_skipped),
                **({"skipped": self.skipped} if self.skipped else {}),
                **({"last_error": self.last_error} if self.last_error else {})}

    def warning(self) -> Optional[dict[str, str]]:
        """haproxy_cannot_route when this run skipped replicas (for the watcher's final summary)."""
        return routing_warning(list(self.ever_skipped.values()), len(self.ever_seen)) if self.ever_skipped else None


# --- haproxy.cfg ------------------------------------------------------------------------

# Generous server/client timeouts: a long generation or a server-sent-event stream may
# be silent for minutes and must not be cut; `timeout tunnel` covers WebSockets.
DEFAULT_LONG_TIMEOUT = "1h"
# Connecting to a healthy replica on the platform's proxy takes well under a second;
# 5 s means it is not there, and the request is retried on another (retry-on + redispatch).
DEFAULT_CONNECT_TIMEOUT = "5s"
# A request waits this long in HAProxy's queue for a free replica (with --server-maxconn).
DEFAULT_QUEUE_TIMEOUT = "60s"
# A client sending its request headers slower than this is not a real client.
DEFAULT_HTTP_REQUEST_TIMEOUT = "30s"
# Connection failures and the platform proxy's 502/503 (the replica is gone or not up)
# mean the request never ran: safe to send again, to another replica. 3 tries in all.
RETRY_ON = "conn-failure empty-response junk-response 502 503"
DEFAULT_RETRIES = 2


def render_config(*, deployment_uuid: str, bind: str, backend: str, socket_path: str, metrics_bind: str,
                  health_path: str, options: str, long_timeout: str = DEFAULT_LONG_TIMEOUT,
                  connect_timeout: str = DEFAULT_CONNECT_TIMEOUT, queue_timeout: str = DEFAULT_QUEUE_TIMEOUT,
                  retries: int = DEFAULT_RETRIES, maxconn: int = 4096) -> str:
    """A complete haproxy.cfg: frontend, an (initially empty) backend fed at runtime, metrics, stats socket."""
    health_path = "/" + health_path.lstrip("/")
    return f"""# haproxy.cfg for AutoDL deployment {deployment_uuid}, written by scripts/haproxy_config.py.
# The backend starts empty: discover_services.py --watch --haproxy-socket {socket_path}
# --haproxy-backend {backend} adds and removes one server per running container.
global
    maxconn {maxconn}
    # The runtime API the watcher feeds (admin level: add/del server). Keep it private.
    stats socket {socket_path} mode 600 level admin
    stats timeout 30s

defaults
    mode http
    log stdout format raw local0 notice
    option httplog
    option dontlognull
    timeout connect {connect_timeout}
    timeout http-request {DEFAULT_HTTP_REQUEST_TIMEOUT}
    timeout queue {queue_timeout}
    timeout client {long_timeout}
    timeout server {long_timeout}
    timeout tunnel {long_timeout}
    timeout http-keep-alive 10s
    # Streams (SSE tokens) go out at once instead of waiting to fill a packet: ~+189 ms TTFT without it.
    option http-no-delay
    # A request that never reached a replica is sent again, to another one.
    retries {retries}
    retry-on {RETRY_ON}
    option redispatch 1

frontend {backend}_in
    bind {bind}
    default_backend {backend}

frontend metrics
    bind {metrics_bind}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 5s

backend {backend}
    # Fewest connections in flight: the GPU-friendly policy for long, uneven requests.
    balance leastconn
    option httpchk GET {health_path}
    http-check expect rstatus ^2
    # Applies to servers written here; the runtime-added ones get the same options on `add server`.
    default-server {options}
"""
