"""The registry, the watcher lock and the shared in-flight counts in a real redis-server.

Unit-level tests drive serving.registry.redis_store directly; the end-to-end ones run
discover_services.py --watch --redis against the simulator, with pools in other processes,
and an active and a standby watcher that both end with their deployment.
Every wait is bounded; the Redis server is one per session, each test under its own prefix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import requests

from helpers import SCRIPTS, running_uuids, sim_service
from helpers.servers import stop, wait_for

pytest.importorskip("redis")

DEPLOYMENT = "833f1cd5a764fa3"
# Watcher polling interval in the end-to-end tests (real seconds).
INTERVAL = 0.1
# Scheduling slack on a loaded 2-core CI machine for "within one TTL" (idle: one interval).
SLACK_SECONDS = 3.0
# The churn test's watcher lists everything only every 1000 cycles (100 s), so only its
# event polling can follow a crash within FOLLOW_SECONDS (idle: one interval).
RESYNC_EVERY = 1000
FOLLOW_SECONDS = 10.0
# Waits poll and end as soon as their condition holds; the bound is for a loaded machine.
WAIT_SECONDS = 30.0


def registry(uuids, stale=False):
    document = {"status": "success", "deployment_uuid": DEPLOYMENT, "generated_at": "2026-12-01T12:00:00+08:00",
                "services": [{"container_uuid": u, "url": f"http://127.0.0.1:9/{u}", "machine_id": None, "gpu_name": None,
                              "since": "2026-12-01T12:00:00+08:00", "healthy": True} for u in uuids]}
    if stale:
        document.update(stale=True, stale_reason="API down")
    return document


def pool_uuids(pool) -> set[str]:
    return {s.container_uuid for s in pool.services()}


@pytest.fixture
def rr(redis_server, key_prefix):
    from autodl_esd.serving.registry import redis_store

    client = redis_store.connect(redis_server.url)
    yield redis_store, client, redis_store.RedisKeys(DEPLOYMENT, key_prefix)
    client.close()


def test_pool_follows_each_change_by_notification_not_by_polling(redis_server, key_prefix, rr):
    from service_pool import ServicePool

    module, client, keys = rr
    publish = module.RegistryPublisher(client, keys, heartbeat_ttl=30, name="test")
    publish(registry(["a-1", "b-2"]))
    pool = ServicePool.from_redis(redis_server.url, DEPLOYMENT, key_prefix=key_prefix, refresh_interval=3600)
    try:
        assert pool_uuids(pool) == {"a-1", "b-2"}  # read at start
        publish(registry(["b-2", "c-3"]))
        wait_for(lambda: pool_uuids(pool) == {"b-2", "c-3"}, WAIT_SECONDS, "the pool to apply the notification")
        assert pool.subscription.notifications == 1
        # An unchanged set is not announced again (the heartbeat is still refreshed).
        publish(registry(["b-2", "c-3"]))
        assert publish.notifications == 2 and publish.published == 3
        assert json.loads(client.get(keys.heartbeat))["watcher"] == "test"
    finally:
        pool.close()


def test_dead_watcher_makes_the_registry_stale_never_empty(redis_server, key_prefix, rr):
    from service_pool import ServicePool

    module, client, keys = rr
    # A heartbeat TTL no loaded machine outlives between publishing and the first check
    # (0.3 s could lapse before the pool even started); the watcher's death is then its
    # heartbeat running out, brought forward with PEXPIRE instead of waited for.
    module.RegistryPublisher(client, keys, heartbeat_ttl=30, name="test")(registry(["a-1"]))
    assert 0 < client.pttl(keys.heartbeat) <= 30_000  # the publisher gave it a TTL
    pool = ServicePool.from_redis(redis_server.url, DEPLOYMENT, key_prefix=key_prefix)
    try:
        pool.subscription.heartbeat_check_seconds = 0.1
        assert not pool.registry_info.get("stale")
        client.pexpire(keys.heartbeat, 1)  # the watcher died: nobody refreshes it
        wait_for(lambda: pool.registry_info.get("stale"), WAIT_SECONDS, "the lapsed heartbeat to mark the registry stale")
        assert pool_uuids(pool) == {"a-1"}
        assert "心跳" in pool.registry_info["stale_reason"]
        assert module.read_registry(client, keys)["stale"] is True
    finally:
        pool.close()


def test_redis_unreachable_keeps_the_last_set_and_says_why():
    from service_pool import ServicePool
    from helpers.servers import free_port

    pool = ServicePool.from_redis(f"redis://127.0.0.1:{free_port()}/0", DEPLOYMENT)
    try:
        assert pool.services() == [] and "Redis" in (pool.last_refresh_error or "")
    finally:
        pool.close()


def test_one_lock_holder_and_takeover_after_the_ttl(rr):
    module, client, keys = rr
    # 30 s: the holder's renew below cannot come after its TTL, however loaded the machine
    # (0.4 s could); the lapse is then brought forward with PEXPIRE.
    first, second = module.WatcherLock(client, keys, ttl=30), module.WatcherLock(client, keys, ttl=30)
    assert first.try_acquire() and not second.try_acquire()
    assert 0 < client.pttl(keys.lock) <= 30_000  # held with a TTL, so a dead holder's lock lapses
    assert first.renew() and not second.try_acquire()
    client.pexpire(keys.lock, 1)  # the first stops renewing (killed, hung): the lock lapses
    wait_for(lambda: not client.exists(keys.lock), WAIT_SECONDS, "the lock to lapse")
    assert second.try_acquire()
    assert not first.renew(), "the old holder learns it lost the lock instead of extending someone else's"
    # ...and its publisher is fenced out: it cannot overwrite what the new active one wrote.
    stale_writer = module.RegistryPublisher(client, keys, 5, "old", lock=first)
    with pytest.raises(module.LostLock):
        stale_writer(registry(["x-1"]))
    module.RegistryPublisher(client, keys, 5, "new", lock=second)(registry(["y-1"]))
    assert [s["container_uuid"] for s in json.loads(client.get(keys.registry))["services"]] == ["y-1"]


def test_shared_counts_pick_the_replica_other_clients_do_not_use(rr):
    from autodl_esd.serving.routing.ledgers import SharedInflight

    module, client, keys = rr
    shared = SharedInflight(client, keys, lease_ttl=30)
    index, lease_a = shared.acquire(["r-1", "r-2"])
    chosen = ["r-1", "r-2"][index]
    other_index, lease_b = shared.acquire(["r-1", "r-2"])
    assert ["r-1", "r-2"][other_index] != chosen  # another client's lease counts
    assert shared.counts(["r-1", "r-2"]) == {"r-1": 1, "r-2": 1}
    shared.release(chosen, lease_a)
    shared.release(["r-1", "r-2"][other_index], lease_b)
    assert shared.counts(["r-1", "r-2"]) == {"r-1": 0, "r-2": 0}


def test_a_lease_never_released_stops_counting_after_its_ttl(rr):
    from autodl_esd.serving.routing.ledgers import SharedInflight

    module, client, keys = rr
    # 1 s: longer than any stall between acquiring and counting (0.3 s was not, under load).
    shared = SharedInflight(client, keys, lease_ttl=1.0)
    shared.acquire(["r-1"])
    assert shared.counts(["r-1"]) == {"r-1": 1}
    shared.close()  # the client is gone: nobody renews its lease any more
    wait_for(lambda: shared.counts(["r-1"]) == {"r-1": 0}, WAIT_SECONDS, "the lease to expire")
    wait_for(lambda: not client.exists(keys.inflight("r-1")), WAIT_SECONDS, "the key itself to expire too")


def test_a_live_clients_long_request_keeps_counting_past_the_ttl(rr):
    from autodl_esd.serving.routing.ledgers import SharedInflight

    module, client, keys = rr
    # 1 s, renewed every 1/3 s: a renewal is missed only if the renewer thread stalls 2/3 s
    # (with 0.3 s, a 0.2 s stall on a loaded machine lost the lease).
    shared = SharedInflight(client, keys, lease_ttl=1.0)
    try:
        _, lease = shared.acquire(["r-1"])
        time.sleep(2.0)  # two TTLs: the renewer kept it
        assert shared.counts(["r-1"]) == {"r-1": 1}
        shared.release("r-1", lease)
        assert shared.counts(["r-1"]) == {"r-1": 0}
    finally:
        shared.close()


def test_pool_falls_back_to_its_own_counts_when_shared_counts_fail(caplog):
    from service_pool import ServicePool

    class Down:
        def acquire(self, candidates):
            raise ConnectionError("redis down")

        def release(self, uuid, lease_id):
            raise AssertionError("never called without a lease id")

    pool = ServicePool.from_services(registry(["a-1", "b-2"])["services"], shared_inflight=Down(), seed=1)
    with pool.lease() as first, pool.lease() as second:
        assert first.container_uuid != second.container_uuid  # local least_inflight still works
    assert "shared in-flight counts unavailable" in caplog.text


# --- end to end: discover_services --watch --redis with the simulator --------------------


def start_watcher(instance, deployment_uuid, redis_url, prefix, *extra) -> subprocess.Popen:
    env = {**os.environ, "AUTODL_HOST": instance.url, "AUTODL_TOKEN": instance.token}
    return subprocess.Popen([sys.executable, str(SCRIPTS / "discover_services.py"), "--deployment-uuid", deployment_uuid,
                             "--watch", "--interval", str(INTERVAL), "--redis", redis_url, "--key-prefix", prefix,
                             "--duration", "120", "--quiet", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A client on "another machine": its own process and Redis connection, printing the set
# its pool holds every time it changes.
POOL_PROCESS = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from service_pool import ServicePool
pool = ServicePool.from_redis(sys.argv[2], sys.argv[3], key_prefix=sys.argv[4])
seen = None
deadline = time.monotonic() + 120  # a bound in case the test dies; it kills this process
while time.monotonic() < deadline:
    now = sorted(s.container_uuid for s in pool.services())
    if now != seen:
        seen = now
        print(json.dumps(now), flush=True)
    time.sleep(0.005)
"""


class LineReader:
    """The last line a child printed, read in a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.last = None
        self.seen: list[set] = []  # every set it printed, in order
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process) -> None:
        for line in process.stdout:
            self.last = set(json.loads(line))
            self.seen.append(self.last)


def test_redis_registry_follows_churn_and_pools_on_two_machines_see_the_same_set(sim, deploy, redis_server, key_prefix):
    instance = sim()
    deployment_uuid = deploy(2)
    watcher = start_watcher(instance, deployment_uuid, redis_server.url, key_prefix, "--resync-every", str(RESYNC_EVERY))
    pools = [subprocess.Popen([sys.executable, "-c", POOL_PROCESS, str(SCRIPTS), redis_server.url, deployment_uuid, key_prefix],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    readers = [LineReader(p) for p in pools]
    try:
        first = running_uuids(instance, deployment_uuid)
        wait_for(lambda: all(r.last == first for r in readers), WAIT_SECONDS, "both pools to hold the running set")
        victim = sorted(first)[0]
        instance.crash_container(victim)
        crashed_at = time.monotonic()
        wait_for(lambda: all(r.last is not None and victim not in r.last for r in readers), FOLLOW_SECONDS,
                 "both pools to drop the crashed one")
        assert time.monotonic() - crashed_at <= FOLLOW_SECONDS  # by its events, not the 100 s resync
        wait_for(lambda: len(running_uuids(instance, deployment_uuid)) == 2
                 and all(r.last == running_uuids(instance, deployment_uuid) for r in readers), WAIT_SECONDS,
                 "both pools to add the replacement")
    finally:
        for process in pools:
            process.kill()
            process.wait(timeout=5)
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=10)
    summary = json.loads(out)
    assert summary["status"] == "success", summary
    # One notification per published change: the first set, the crash, the replacement; on a
    # loaded machine one poll can see the crash and the replacement together (one change).
    # A pool that saw the set with one replica saw that change announced on its own.
    survivor = first - {victim}
    apart = any(survivor in reader.seen for reader in readers)
    assert summary["redis"]["role"] == "active" and summary["redis"]["notifications"] >= (3 if apart else 2), (
        summary["redis"], [reader.seen for reader in readers])
    assert redis_server.url.split("@")[-1] in summary["redis"]["url"]
    # Active from its first round: it took over from nobody (only a lock lost and taken back counts).
    assert summary["redis"]["takeovers"] == summary["redis"]["lost_lock"], summary["redis"]


def heartbeat_pid(client, keys):
    body = client.get(keys.heartbeat)
    return int(json.loads(body)["watcher"].split(":")[1]) if body else None


def test_two_watchers_poll_the_api_once_and_a_standby_takes_over_within_one_ttl(sim, deploy, redis_server, key_prefix, rr):
    module, client, _ = rr
    instance = sim()
    deployment_uuid = deploy(2)
    keys = module.RedisKeys(deployment_uuid, key_prefix)
    # 2 s: the watcher that took over renews every 0.1 s, so only a 1.9 s stall of it can
    # lose the lock (1 s was lost once under heavy load, and taken back: two takeovers).
    ttl = 2.0

    def resolved() -> int:  # each watcher looks its deployment up once, before it watches
        return len([r for r in instance.request_log() if r[1] == "/api/v1/dev/deployment/list"])

    looked_up = resolved()
    watchers = {}
    for _ in range(2):
        process = start_watcher(instance, deployment_uuid, redis_server.url, key_prefix, "--lock-ttl", str(ttl))
        watchers[process.pid] = process
    try:
        active_pid = wait_for(lambda: heartbeat_pid(client, keys), WAIT_SECONDS, "a watcher to become active")
        wait_for(lambda: resolved() >= looked_up + 2, WAIT_SECONDS, "both watchers to be running")
        time.sleep(0.3)
        before = len([r for r in instance.request_log() if "event/list" in r[1]])
        window_started = time.monotonic()
        time.sleep(1.0)
        polls = len([r for r in instance.request_log() if "event/list" in r[1]]) - before
        window = time.monotonic() - window_started  # a loaded machine oversleeps
        # One watcher at 0.1 s polls at most ~10 times a second; two would poll ~20.
        assert polls <= window / INTERVAL * 1.4 + 1, f"{polls} event polls in {window:.1f} s: more than one watcher polls the API"

        watchers[active_pid].kill()  # SIGKILL: no chance to release the lock
        killed_at = time.monotonic()
        standby_pid = next(pid for pid in watchers if pid != active_pid)
        wait_for(lambda: heartbeat_pid(client, keys) == standby_pid, ttl + INTERVAL + SLACK_SECONDS + 2, "the standby to take over")
        assert time.monotonic() - killed_at <= ttl + INTERVAL + SLACK_SECONDS

        # The new active one keeps the registry current.
        victim = sorted(running_uuids(instance, deployment_uuid))[0]
        instance.crash_container(victim)
        wait_for(lambda: victim not in {s["container_uuid"] for s in json.loads(client.get(keys.registry))["services"]},
                 WAIT_SECONDS, "the new active watcher to deregister a crash")
    finally:
        for process in watchers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        results = {pid: process.communicate(timeout=10) for pid, process in watchers.items()}
    summary = json.loads(results[standby_pid][0])
    # One takeover, and any more only after a loss it reported (a stall past the TTL).
    redis_summary = summary["redis"]
    assert redis_summary["takeovers"] == 1 + redis_summary["lost_lock"] and redis_summary["standby_rounds"] >= 1, redis_summary


# A client whose request hangs on a replica until it is killed (SIGKILL, mid-request).
HANGING_CLIENT = """
import sys, urllib.request
sys.path.insert(0, sys.argv[1])
from service_pool import ServicePool
pool = ServicePool.from_redis(sys.argv[2], sys.argv[3], key_prefix=sys.argv[4], shared_inflight=True, lease_ttl=float(sys.argv[5]))
with pool.lease() as service:
    print(service.container_uuid, flush=True)
    urllib.request.urlopen(service.url + "/slow", timeout=60).read()
"""


def test_shared_counts_balance_two_clients_and_a_killed_client_leaks_nothing(sim, deploy, redis_server, key_prefix, rr):
    from service_pool import ServicePool
    from autodl_esd.serving.routing.ledgers import SharedInflight

    module, client, _ = rr
    instance = sim()
    deployment_uuid = deploy(2)
    keys = module.RedisKeys(deployment_uuid, key_prefix)
    for machine in {c["machine_id"] for c in instance.containers(deployment_uuid)}:
        instance.set_machine_concurrency(machine, 1)  # a GPU serving one request at a time
        instance.set_machine_latency(machine, 0.05)
    watcher = start_watcher(instance, deployment_uuid, redis_server.url, key_prefix)
    shared = SharedInflight(client, keys)
    try:
        wait_for(lambda: client.exists(keys.registry), 10, "the registry in Redis")
        pools = [ServicePool.from_redis(redis_server.url, deployment_uuid, key_prefix=key_prefix, shared_inflight=True, seed=i)
                 for i in range(2)]
        uuids = sorted(running_uuids(instance, deployment_uuid))
        overlaps = []

        def fetch(service):
            overlaps.append(max(shared.counts(uuids).values()))
            with urllib.request.urlopen(service.url + "/predict", timeout=10) as response:
                return json.loads(response.read())

        def client_loop(pool):
            for _ in range(15):
                pool.call(fetch, retries=0)

        threads = [threading.Thread(target=client_loop, args=(pool,)) for pool in pools]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        # Two clients, one request each at a time, two replicas: with shared counts they never
        # land on the same replica (independent pools would, about half the time).
        assert len(overlaps) == 30 and max(overlaps) == 1, overlaps
        assert shared.counts(uuids) == {u: 0 for u in uuids}
        for pool in pools:
            pool.close()

        # A client killed mid-request: its lease counts until its TTL, then nothing is left.
        # (1.5 s, renewed every 0.5 s: the first count below cannot miss it on a loaded machine.)
        for machine in {c["machine_id"] for c in instance.containers(deployment_uuid)}:
            instance.set_machine_latency(machine, 5)
        hanging = subprocess.Popen([sys.executable, "-c", HANGING_CLIENT, str(SCRIPTS), redis_server.url, deployment_uuid,
                                    key_prefix, "1.5"], stdout=subprocess.PIPE, text=True)
        leased = hanging.stdout.readline().strip()
        assert shared.counts(uuids)[leased] == 1
        hanging.kill()
        hanging.wait(timeout=5)
        wait_for(lambda: shared.counts(uuids) == {u: 0 for u in uuids}, WAIT_SECONDS, "the dead client's lease to expire")
    finally:
        for machine in {c["machine_id"] for c in instance.containers(deployment_uuid)}:
            instance.set_machine_latency(machine, 0)
        watcher.send_signal(signal.SIGTERM)
        watcher.communicate(timeout=10)


def test_watch_redis_flags_are_checked_before_anything_runs(run):
    code, out, _ = run("discover_services.py", "--deployment-uuid", DEPLOYMENT, "--redis", "redis://127.0.0.1:9/0")
    assert code == 1 and out["error_type"] == "usage_error" and "--watch" in out["message"]
    code, out, _ = run("discover_services.py", "--deployment-uuid", DEPLOYMENT, "--watch", "--lock-ttl", "5")
    assert code == 1 and out["error_type"] == "usage_error" and "--redis" in out["message"]
    code, out, _ = run("discover_services.py", "--deployment-uuid", DEPLOYMENT, "--watch", "--haproxy-socket", "/tmp/x.sock")
    assert code == 1 and "--haproxy-backend" in out["message"]


def test_unreachable_redis_is_a_clear_error_without_the_password(sim, deploy, run):
    from helpers.servers import free_port

    sim()
    deployment_uuid = deploy(1)
    code, out, err = run("discover_services.py", "--deployment-uuid", deployment_uuid, "--watch", "--max-cycles", "1",
                         "--redis", f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0", "--quiet")
    assert code == 1 and out["error_type"] == "usage_error" and "Redis" in out["message"]
    assert "s3cret-pass" not in json.dumps(out) + err


@pytest.mark.parametrize("script", ["discover_services.py", "haproxy_config.py"])
def test_help_imports_neither_redis_nor_the_scale_out_modules(script):
    probe = (f"import sys, runpy; sys.path.insert(0, {str(SCRIPTS)!r}); sys.argv = [{script!r}, '--help']\n"
             f"try:\n    runpy.run_path({str(SCRIPTS / script)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print([m for m in ('redis', 'autodl_esd.serving.registry.redis_store', 'autodl_esd.serving.registry.redis_watcher', "
             "'autodl_esd.serving.routing.ledgers', 'autodl_esd.serving.routing.redis_pool', 'autodl_esd.serving.haproxy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:] + done.stderr[-500:]


def test_gateway_follows_the_redis_registry_by_notification(sim, deploy, redis_server, key_prefix):
    pytest.importorskip("aiohttp")
    instance = sim()
    deployment_uuid = deploy(2)
    watcher = start_watcher(instance, deployment_uuid, redis_server.url, key_prefix)
    # The gateway gets no AutoDL token: it must not poll the API itself.
    env = {**os.environ, "AUTODL_TOKEN": "", "AUTODL_HOST": "http://127.0.0.1:9"}
    gateway = subprocess.Popen([sys.executable, str(SCRIPTS / "serve_gateway.py"), "--deployment-uuid", deployment_uuid,
                                "--registry-redis", redis_server.url, "--key-prefix", key_prefix, "--listen", "127.0.0.1:0",
                                "--interval", "120", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(gateway.stdout.readline() or "{}")
        assert ready.get("status") == "success", gateway.stderr.read() if gateway.poll() is not None else ready

        def served_by() -> set[str]:
            seen = set()
            for _ in range(8):
                with urllib.request.urlopen(ready["url"] + "/predict", timeout=10) as response:
                    seen.add(response.headers["X-Served-By"])
            return seen

        first = running_uuids(instance, deployment_uuid)
        wait_for(lambda: served_by() == first, WAIT_SECONDS, "the gateway to route to both replicas")
        victim = sorted(first)[0]
        instance.crash_container(victim)
        # --interval 120: only a notification (not the gateway's own poll) can bring the change in time.
        wait_for(lambda: len(running_uuids(instance, deployment_uuid)) == 2
                 and served_by() == running_uuids(instance, deployment_uuid), WAIT_SECONDS, "the gateway to follow the churn")
        with urllib.request.urlopen(ready["url"] + "/_gateway/status", timeout=5) as response:
            status = json.loads(response.read())
        assert "Redis" in json.dumps(status, ensure_ascii=False)
    finally:
        gateway.send_signal(signal.SIGTERM)
        out, _ = gateway.communicate(timeout=15)
        watcher.send_signal(signal.SIGTERM)
        watcher.communicate(timeout=10)
    assert json.loads(out)["status"] == "success"


def start_gateway(deployment_uuid, redis_url, prefix, *extra):
    env = {**os.environ, "AUTODL_TOKEN": "", "AUTODL_HOST": "http://127.0.0.1:9"}
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "serve_gateway.py"), "--deployment-uuid", deployment_uuid,
                                "--registry-redis", redis_url, "--key-prefix", prefix, "--listen", "127.0.0.1:0", "--quiet", *extra],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = json.loads(process.stdout.readline() or "{}")
    assert ready.get("status") == "success", process.stderr.read() if process.poll() is not None else ready
    return process, ready["url"]


def get(url, path="/predict", timeout=10):
    with urllib.request.urlopen(url + path, timeout=timeout) as response:
        return response.headers.get("X-Served-By"), json.loads(response.read())


def test_gateways_with_shared_inflight_see_each_others_requests(sim, deploy, redis_server, key_prefix):
    pytest.importorskip("aiohttp")
    instance = sim()
    deployment_uuid = deploy(2)
    machines = {c["uuid"]: c["machine_id"] for c in instance.containers(deployment_uuid) if c["status"] == "running"}
    watcher = start_watcher(instance, deployment_uuid, redis_server.url, key_prefix)
    gateways = []
    try:
        for _ in range(2):
            gateways.append(start_gateway(deployment_uuid, redis_server.url, key_prefix, "--shared-inflight"))
        (a, a_url), (b, b_url) = gateways
        wait_for(lambda: len({get(b_url)[0] for _ in range(6)}) == 2, WAIT_SECONDS, "gateway B to know both replicas")
        for machine in machines.values():
            instance.set_machine_latency(machine, 0.05)

        def long_stream():  # through gateway A until the replica is crashed below (at most 25 s)
            request = urllib.request.Request(a_url + "/v1/completions", data=json.dumps({"max_tokens": 500, "stream": True}).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    while response.read(1024):
                        pass
            except Exception:
                pass  # cut by the crash: that is how it ends

        # A request through gateway A that lasts until the test ends it (a 3 s one could end
        # before a loaded machine got through the steps below).
        hanging = threading.Thread(target=long_stream, daemon=True)
        hanging.start()

        from autodl_esd.serving.registry import redis_store
        from autodl_esd.serving.routing import ledgers

        client = redis_store.connect(redis_server.url)
        shared = ledgers.SharedInflight(client, redis_store.RedisKeys(deployment_uuid, key_prefix))

        def remote_counts():
            return shared.counts(sorted(machines))

        busy = wait_for(lambda: next((u for u, n in remote_counts().items() if n == 1), None), WAIT_SECONDS,
                        "gateway A's request to be counted in Redis")
        other = next(u for u in machines if u != busy)
        # Gateway B reads the shared counts every LEDGER_REFRESH_SECONDS (50 ms); twenty of
        # them is slack for a loaded 2-core machine.
        time.sleep(20 * ledgers.LEDGER_REFRESH_SECONDS)
        instance.set_machine_latency(machines[other], 0.01)
        served = [get(b_url)[0] for _ in range(4)]
        assert served == [other] * 4, (busy, served)  # B keeps off the replica A is using
        instance.crash_container(busy)  # ends A's request (cut mid-stream)
        hanging.join(timeout=WAIT_SECONDS)
        wait_for(lambda: set(remote_counts().values()) == {0}, WAIT_SECONDS, "A's finished request to stop counting")
        client.close()
    finally:
        for machine in machines.values():
            instance.set_machine_latency(machine, 0)
        for process, _ in gateways:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)
        watcher.send_signal(signal.SIGTERM)
        watcher.communicate(timeout=10)


def test_cache_aware_gateways_sharing_redis_send_a_session_to_the_same_replica(sim, deploy, redis_server, key_prefix):
    pytest.importorskip("aiohttp")
    instance = sim()
    deployment_uuid = deploy(3)
    watcher = start_watcher(instance, deployment_uuid, redis_server.url, key_prefix)
    gateways = []
    try:
        for _ in range(2):
            gateways.append(start_gateway(deployment_uuid, redis_server.url, key_prefix, "--shared-inflight", "--policy", "cache_aware"))
        urls = [url for _, url in gateways]
        for url in urls:
            wait_for(lambda: len(json.loads(urllib.request.urlopen(url + "/_gateway/status", timeout=5).read())["replicas"]) == 3,
                     WAIT_SECONDS, "both gateways to know the three replicas")

        def served(url: str, session: str) -> str:
            request = urllib.request.Request(url + "/predict", headers={"X-Session-ID": session})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.headers["X-Served-By"]

        placed = {}
        for index in range(24):  # one request at a time: nothing in flight, every session at home
            session = f"session-{index}"
            answers = {served(url, session) for url in urls for _ in range(2)}
            assert len(answers) == 1, (session, answers)
            placed[session] = answers.pop()
        assert len(set(placed.values())) == 3  # the sessions spread over every replica
    finally:
        for process, _ in gateways:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)
        watcher.send_signal(signal.SIGTERM)
        watcher.communicate(timeout=10)


# --- active and standby watchers on the one-machine cluster (helpers.sim_service) ---------


def _watcher(deployment_uuid: str, redis_url: str, key_prefix: str, *extra: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / "discover_services.py"), "--deployment-uuid", deployment_uuid,
                             "--watch", "--interval", "0.1", "--redis", redis_url, "--key-prefix", key_prefix,
                             "--duration", "60", *extra], env={**os.environ, "PYTHONPATH": str(SCRIPTS)},
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_a_standby_watcher_says_who_holds_the_lock_and_when_it_takes_over(sim, redis_server, key_prefix, tmp_path):
    import signal

    from autodl_esd.platform import api
    from autodl_esd.serving.registry import redis_store as redis_registry

    instance = sim(cluster=sim_service.CLUSTER)
    uuid = sim_service.deploy(instance, 1)
    keys = redis_registry.RedisKeys(uuid, key_prefix)
    redis_client = redis_server.client

    def active_name():
        body = redis_client.get(keys.heartbeat)
        return json.loads(body)["watcher"] if body else None

    # 2 s: a loaded machine's renewals (every 0.1 s) never let it lapse by accident.
    first = _watcher(uuid, redis_server.url, key_prefix, "--lock-ttl", "2")
    watchers = [first]
    try:
        active = wait_for(active_name, WAIT_SECONDS, "the first watcher to become active")
        # The second's progress goes to a file, read while it runs: it says when it stands by.
        second_log = tmp_path / "second.stderr"
        with second_log.open("w", encoding="utf-8") as log:
            second = _watcher(uuid, redis_server.url, key_prefix, "--lock-ttl", "2", stderr=log)
        watchers.append(second)
        wait_for(lambda: "备用 watcher" in second_log.read_text(encoding="utf-8"), WAIT_SECONDS, "the second watcher to stand by")
        first.send_signal(signal.SIGKILL)  # dies without releasing: the lock lapses after its TTL
        first.communicate(timeout=WAIT_SECONDS)
        wait_for(lambda: active_name() not in (None, active), WAIT_SECONDS, "the standby to take over")
        api.stop_deployment(sim_service.client(), uuid)
        out, _ = second.communicate(timeout=WAIT_SECONDS)
        err = second_log.read_text(encoding="utf-8")
    finally:
        for process in watchers:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert json.loads(out)["stopped_by"] == "deployment_stopped", err[-2000:]
    standby_lines = [line for line in err.splitlines() if "备用 watcher" in line]
    assert standby_lines and active in standby_lines[0] and "跟随 Redis 中的注册表" in standby_lines[0], err[-2000:]
    takeover = [line for line in err.splitlines() if "成为活动 watcher" in line]
    assert takeover and "接管" in takeover[0] and active in takeover[0], err[-2000:]
    # 6: the ended registry expires (an hour), the heartbeat lapses: a shared Redis keeps neither.
    ttl = redis_client.ttl(keys.registry)
    assert 0 < ttl <= redis_registry.ENDED_REGISTRY_TTL_SECONDS, ttl
    assert -2 == redis_client.ttl(keys.heartbeat) or 0 < redis_client.ttl(keys.heartbeat) <= 2  # gone, or lapsing
    final = redis_registry.read_registry(redis_client, keys)
    assert final["ended"] == "deployment_stopped" and "stale" not in final


def test_redis_watchers_active_and_standby_both_end_and_the_registry_is_final(sim, deploy, redis_server, key_prefix):
    from autodl_esd.serving.registry import redis_store as redis_registry

    instance = sim()
    deployment_uuid = deploy(1)
    watchers = [subprocess.Popen([sys.executable, str(SCRIPTS / "discover_services.py"), "--deployment-uuid", deployment_uuid,
                                  "--watch", "--interval", "0.1", "--redis", redis_server.url, "--key-prefix", key_prefix,
                                  "--duration", "60", "--quiet"], env=dict(os.environ), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    keys = redis_registry.RedisKeys(deployment_uuid, key_prefix)
    try:
        wait_for(lambda: (redis_registry.read_registry(redis_server.client, keys) or {}).get("services"), 20, "the registry in Redis")
        answer = requests.put(instance.url + "/api/v1/dev/deployment/operate", json={"deployment_uuid": deployment_uuid, "operate": "stop"},
                              headers={"Authorization": instance.token}, timeout=5).json()
        assert answer["code"] == "Success", answer
        results = [watcher.communicate(timeout=30) for watcher in watchers]
    finally:
        for watcher in watchers:
            stop(watcher)
    summaries = [json.loads(out) for out, _ in results]
    assert [w.returncode for w in watchers] == [0, 0], [err[-500:] for _, err in results]
    assert [s["stopped_by"] for s in summaries] == ["deployment_stopped"] * 2
    assert sorted(s["redis"]["role"] for s in summaries) == ["active", "standby"]
    time.sleep(0.1)
    final = redis_registry.read_registry(redis_server.client, keys)  # the heartbeat is gone: still not stale
    assert final["ended"] == "deployment_stopped" and final["services"] == [] and "stale" not in final


def test_a_password_protected_redis_takes_its_password_from_the_environment(tmp_path, monkeypatch):
    from helpers.servers import RedisServer

    from autodl_esd.core.output import scrub
    from autodl_esd.serving.registry import redis_store

    import redis

    server = RedisServer(tmp_path)
    try:
        password = "redis-secret-0123456789"
        server.client.config_set("requirepass", password)
        monkeypatch.delenv(redis_store.PASSWORD_ENV, raising=False)
        with pytest.raises(redis.AuthenticationError):
            redis_store.connect(server.url).ping()  # no password anywhere: refused
        monkeypatch.setenv(redis_store.PASSWORD_ENV, password)
        assert redis_store.connect(server.url).ping()  # the URL has none: the environment's
        assert password not in scrub(f"using {password}")  # never printed, as a token is not
        wrong = server.url.replace("redis://", "redis://:not-the-password@")
        with pytest.raises(redis.AuthenticationError):
            redis_store.connect(wrong).ping()  # a password in the URL wins over the environment
    finally:
        server.stop()
