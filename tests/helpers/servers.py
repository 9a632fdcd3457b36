"""Real redis-server and haproxy for the scale-out tests, on loopback ports they pick.

Each server gets a temporary directory for its config and data and is stopped when its
fixture ends (the fixtures `redis_server`, `haproxy_server` and `key_prefix` are in conftest.py). When a binary is missing the test is skipped with the reason, except in CI
(CI=true), where .ci/run installs them (and wrk, for the gateway bench) and a missing one is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

# A local redis-server or haproxy is up in tens of milliseconds; 10 s means it is not coming.
START_TIMEOUT_SECONDS = 10.0


# HAProxy's health checks in the tests: without `timeout check` the whole check must answer
# within `inter`, and the simulator answering them shares a loaded 2-core machine with the
# test's own traffic. 200 ms and one miss marked replicas DOWN under load (the "both
# replicas" wait timed out; all DOWN is a 503); 1 s and two misses in a row do not.
CHECK_INTER = "1s"
CHECK_FALL = 2


def require_binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed: .ci/run must install it (apt-get install -y {name})")
    pytest.skip(f"{name} is not installed (apt-get install -y {name}); these tests need the real program")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pid_alive(pid) -> bool:
    """Whether a process runs; a zombie child of this test process counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def wait_for(predicate, timeout: float = START_TIMEOUT_SECONDS, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        (directory / "redis.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\nsave \"\"\nappendonly no\nprotected-mode yes\n"
            "daemonize no\nlogfile \"\"\n", encoding="utf-8")
        self.process = subprocess.Popen([self.binary, str(directory / "redis.conf")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis.from_url(self.url, decode_responses=True)

        def answers():
            try:
                return self.client.ping()
            except redis.RedisError:
                if self.process.poll() is not None:
                    raise AssertionError("redis-server exited at start")
                return False

        wait_for(answers, what="redis-server to answer PING")

    def stop(self) -> None:
        self.client.close()
        stop(self.process)


class HaproxyServer:
    def __init__(self, directory: Path, config_text: str, socket_path: Path) -> None:
        self.binary = require_binary("haproxy")
        self.config = directory / "haproxy.cfg"
        self.config.write_text(config_text, encoding="utf-8")
        self.socket_path = socket_path
        self.log = directory / "haproxy.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([self.binary, "-f", str(self.config), "-db"], stdout=log, stderr=subprocess.STDOUT)

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited at start: {self.log.read_text(errors='replace')[-2000:]}")
            return socket_path.exists()

        wait_for(ready, what="haproxy's stats socket")

    def stop(self) -> None:
        stop(self.process)
