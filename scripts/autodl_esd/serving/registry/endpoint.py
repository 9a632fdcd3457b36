"""The registry on a loopback port: GET /services (the document) and GET /pick?policy=...

`discover_services.py --watch --serve` runs it beside the watcher: IPv4 or IPv6 loopback
only, only loopback Host headers (DNS rebinding), idle connections time out, every error in
the project's JSON error shape.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ...core.errors import ErrorType, error_document
from ...core.loopback import host_header_allowed
from ..pool import POLICIES, NoReplicaAvailable, ServicePool

# stop() waits for the endpoint's serve loop to notice; 0.1 s keeps Ctrl-C snappy at no cost.
SERVE_POLL_SECONDS = 0.1
# The endpoint drops a connection idle this long (a client that stalls mid-request included).
ENDPOINT_IDLE_SECONDS = 10.0
ENDPOINT_PATHS = ("/services", "/pick")

# The endpoint's pools read the registry this process builds; their (English) library
# warnings, e.g. "registry is stale", repeat what the watcher already logs in Chinese, so
# they go nowhere instead of onto the script's stderr.
QUIET_POOL_LOG = logging.getLogger(__name__ + ".pools")
QUIET_POOL_LOG.addHandler(logging.NullHandler())
QUIET_POOL_LOG.propagate = False
# No records at all: newer pytest's caplog (9.2) sees records of non-propagating loggers too.
QUIET_POOL_LOG.disabled = True


def parse_loopback_address(text: str) -> tuple[str, int]:
    """HOST:PORT for --serve; only loopback hosts (the registry is not for the network)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"不是 HOST:PORT: {text!r} (例: 127.0.0.1:8765)")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"只能监听本机回环地址 (127.0.0.1 / ::1 / localhost), 不能是 {host!r}: 注册表不应暴露到网络")
    return host, int(port_text)


class RegistryEndpoint:
    """GET /services (the registry) and GET /pick?policy=... on a loopback port.

    Both say `"stale": true` and `stale_reason` while the registry is the last good one kept
    through an API failure (/services as part of the registry document).

    /pick leases a replica from a `service_pool.ServicePool` fed by the registry and hands it
    back at once: the endpoint never sees the caller's request finish, so in-flight counts
    stay zero and `least_inflight` behaves like two random choices. Clients that can import
    service_pool should embed the pool (from_endpoint) instead.
    """

    def __init__(self, host: str, port: int, registry: Callable[[], dict[str, Any] | None],
                 allowed_hosts: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self.allowed_hosts = allowed_hosts
        self.pools = {policy: ServicePool(policy=policy, refresh_interval=0, source=registry, logger=QUIET_POOL_LOG) for policy in POLICIES}
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), _handler_for(self))
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(SERVE_POLL_SECONDS,), name="registry-endpoint", daemon=True
        )

    def start(self) -> "RegistryEndpoint":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        document = self.registry()
        if path not in ENDPOINT_PATHS:
            return 404, error_document(ErrorType.NOT_FOUND, f"没有这个路径: {path}", f"可用: {', '.join(ENDPOINT_PATHS)}",
                                    {"path": path, "available_paths": list(ENDPOINT_PATHS)})
        if document is None:
            return 503, _unavailable("注册表还没有生成 (第一次查询 AutoDL 尚未完成)。", "稍等一个轮询间隔后重试。")
        if path == "/services":
            return 200, document
        policy = (query.get("policy") or ["least_inflight"])[0]
        pool = self.pools.get(policy)
        if pool is None:
            return 400, error_document(ErrorType.USAGE_ERROR, f"未知策略 {policy!r}。", f"policy 可选: {', '.join(self.pools)}。",
                                    {"policy": policy, "available_policies": list(self.pools)})
        try:
            lease = pool.lease()
        except NoReplicaAvailable as reason:
            return 503, _unavailable(f"没有可用副本: {reason}",
                                     "副本可能都在启动或健康检查失败; 稍后重试, 或用 GET /services 查看各副本的 healthy。")
        lease.release()
        service = lease.service
        answer = {
            "status": "success", "policy": policy,
            "service": {"container_uuid": service.container_uuid, "url": service.url,
                        "machine_id": service.machine_id, "gpu_name": service.gpu_name},
        }
        if document.get("stale"):
            # The pick comes from the last good registry: replicas may have left since.
            answer.update(stale=True, stale_reason=document.get("stale_reason"),
                          note="注册表已过期 (查询 AutoDL 失败, 用的是上一次的结果): 这个副本可能已经不在了, 请求失败时换一个重试。")
        return 200, answer


def _unavailable(message: str, hint: str) -> dict[str, Any]:
    """Nothing to hand out yet: temporary, so api_error with retryable (HTTP 503)."""
    return error_document(ErrorType.API_ERROR, message, hint, {"code": None, "msg": message, "http_status": 503, "retryable": True})


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(endpoint: RegistryEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # A connection that sends nothing (or half a request) for this long is dropped.
        timeout = ENDPOINT_IDLE_SECONDS

        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            if not host_header_allowed(self.headers.get("Host"), endpoint.allowed_hosts):
                self._reply(421, error_document(ErrorType.USAGE_ERROR, f"不接受的 Host 请求头: {self.headers.get('Host')!r}。",
                                             "注册表接口只接受本机回环地址 (localhost / 127.0.0.1 / ::1) 作为 Host, 防止 DNS rebinding。",
                                             {"host": self.headers.get("Host")}))
                return
            parts = urlsplit(self.path)
            status, body = endpoint.answer(parts.path.rstrip("/") or "/", parse_qs(parts.query))
            self._reply(status, body)

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # Malformed requests, unsupported methods, oversized lines: JSON, not the stdlib's HTML page.
            self.close_connection = True
            try:
                self._reply(code, error_document(ErrorType.USAGE_ERROR, f"请求无法处理: HTTP {code} {message or ''}".strip(),
                                              "注册表接口只支持 GET /services 与 GET /pick。",
                                              {"http_status": code, "reason": explain or message or ""}))
            except OSError:
                pass  # the client is gone

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # stdout/stderr belong to the script's contract; requests are not progress

    return Handler
