"""What the serving benches start and measure beside our own code: HAProxy with the config
serving/haproxy.py renders (haproxy_config.py's), nginx, wrk; ports, waits, CPU from /proc.

Each server runs in the foreground as a child of the bench, on loopback ports, with its
files in a temporary directory; `stop` ends it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

# Any single wait longer than this is a failure, not a slow machine.
WAIT_LIMIT_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, what: str, limit: float = WAIT_LIMIT_SECONDS):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def find_binary(name: str) -> Optional[str]:
    """The program's path (also in /usr/sbin, which a non-root PATH lacks), or None."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def binary(name: str) -> str:
    found = find_binary(name)
    if not found:
        raise SystemExit(f"{name} is not installed: apt-get install -y {name}")
    return found


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and of its live children (nginx's workers)."""
    ticks = 0
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks += int(fields[11]) + int(fields[12])
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as children:
            for child in children.read().split():
                try:
                    ticks += round(cpu_seconds(int(child)) * os.sysconf("SC_CLK_TCK"))
                except FileNotFoundError:
                    pass  # exited meanwhile
    except FileNotFoundError:
        pass
    return ticks / os.sysconf("SC_CLK_TCK")


# ---- HAProxy ---------------------------------------------------------------------------


def start_haproxy(directory: Path, deployment_uuid: str, options: str, name: str = "haproxy") -> tuple[subprocess.Popen, str, str]:
    """HAProxy with our rendered config (its empty backend is fed at runtime): (process, url, stats socket)."""
    from autodl_esd.serving import haproxy

    port, metrics = free_port(), free_port()
    socket_path = directory / f"{name}.sock"
    config = haproxy.render_config(deployment_uuid=deployment_uuid, bind=f"127.0.0.1:{port}", backend="replicas",
                                   socket_path=str(socket_path), metrics_bind=f"127.0.0.1:{metrics}", health_path="/health",
                                   options=options)
    path = directory / f"{name}.cfg"
    path.write_text(config, encoding="utf-8")
    # Its log goes to stdout (the rendered config's `log stdout`): not into the bench's tables.
    process = subprocess.Popen([binary("haproxy"), "-f", str(path), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(socket_path.exists, "haproxy's stats socket")
    return process, f"http://127.0.0.1:{port}", str(socket_path)


# ---- nginx -----------------------------------------------------------------------------

NGINX_COMMON = """
worker_processes {workers};
pid {directory}/nginx-{name}.pid;
error_log {directory}/nginx-{name}.error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {directory}/{name}-body;
    proxy_temp_path {directory}/{name}-proxy;
    fastcgi_temp_path {directory}/{name}-fastcgi;
    uwsgi_temp_path {directory}/{name}-uwsgi;
    scgi_temp_path {directory}/{name}-scgi;
{body}
}}
"""


def start_nginx(directory: Path, name: str, body: str, ports: list[int], workers: int = 1) -> subprocess.Popen:
    """nginx in the foreground with `body` inside its http block; waits until `ports` accept."""
    path = directory / f"nginx-{name}.conf"
    path.write_text(NGINX_COMMON.format(workers=workers, directory=directory, name=name, body=body), encoding="utf-8")
    process = subprocess.Popen([binary("nginx"), "-c", str(path), "-p", str(directory), "-e", str(directory / f"nginx-{name}.start.log"),
                                "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for port in ports:
        wait_for(lambda: listening(port) or process.poll() is not None, f"nginx {name} on port {port}")
        if process.poll() is not None:
            raise SystemExit(f"nginx {name} did not start: {process.stderr.read().decode()[-1000:]}")
    return process


def static_upstream_body(ports: list[int], body: str) -> str:
    """nginx answering every path with a small JSON body on each port (a replica that is never the limit)."""
    servers = "\n".join(f"    server {{ listen 127.0.0.1:{port} backlog=4096; default_type application/json; "
                        f"location / {{ return 200 '{body}'; }} }}" for port in ports)
    return servers


def least_conn_proxy_body(port: int, upstreams: list[str]) -> str:
    """nginx as the load balancer: least_conn over `upstreams` (host:port), keep-alive to them, no buffering (SSE)."""
    servers = "\n".join(f"        server {address};" for address in upstreams)
    return f"""    upstream replicas {{
        least_conn;
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}"""


# ---- wrk -------------------------------------------------------------------------------

WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run: requests/s, latency p50/p99 (seconds), requests, errors (non-2xx, socket errors)."""
    threads = max(1, min(connections, 2))
    done = subprocess.run([binary("wrk"), "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
                          capture_output=True, text=True, timeout=seconds + 30)
    text = done.stdout
    if done.returncode != 0 or "Requests/sec" not in text:
        raise SystemExit(f"wrk failed against {url}: {text[-500:]} {done.stderr[-500:]}")

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(match.group(1)) * WRK_UNITS[match.group(2)] if match else float("nan")

    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), "p50": latency("50"),
            "p99": latency("99"), "requests": requests, "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}
