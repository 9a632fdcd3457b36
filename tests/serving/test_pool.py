"""Tests for scripts/service_pool.py and schemas/registry.schema.json."""

from __future__ import annotations

import heapq
import http.server
import json
import os
import statistics
import sys
import threading
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from helpers import ROOT  # puts scripts/ on sys.path, where service_pool lives

from service_pool import NoReplicaAvailable, ServicePool  # noqa: E402

DEPLOYMENT = "833f1cd5a764fa3"
SCHEMA = json.loads((ROOT / "schemas" / "registry.schema.json").read_text(encoding="utf-8"))


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def uuid_of(n: int) -> str:
    return f"{DEPLOYMENT}-{n:010x}-{n:08x}"


def item(n: int, url: str | None = None, healthy: bool = True) -> dict:
    return {
        "container_uuid": uuid_of(n),
        "url": url or f"http://127.0.0.1:{5000 + n}/svc/{n}",
        "machine_id": f"{n:010x}",
        "gpu_name": "RTX 4090",
        "since": "2026-11-25T11:59:00+08:00",
        "healthy": healthy,
    }


def registry(*items: dict, **extra) -> dict:
    return {"status": "success", "deployment_uuid": DEPLOYMENT,
            "generated_at": "2026-11-25T12:00:00+08:00", "services": list(items), **extra}


def write_atomically(path: Path, document) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    os.replace(tmp, path)


def stats_by_uuid(pool: ServicePool) -> dict[str, dict]:
    return {row["container_uuid"]: row for row in pool.stats()}


def pick_counts(pool: ServicePool, n: int) -> Counter:
    counts: Counter = Counter()
    for _ in range(n):
        with pool.lease() as svc:
            counts[svc.container_uuid] += 1
    return counts


# ---- policies ------------------------------------------------------------


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        ServicePool(policy="least_conn")
    for name in ("least_inflight", "round_robin", "random"):
        assert name in str(info.value)


def test_round_robin_cycles_evenly():
    pool = ServicePool.from_services([item(1), item(2), item(3)], policy="round_robin")
    order = []
    for _ in range(9):
        with pool.lease() as svc:
            order.append(svc.container_uuid)
    assert order[:3] == [uuid_of(1), uuid_of(2), uuid_of(3)]
    assert order == order[:3] * 3
    assert set(pick_counts(pool, 300).values()) == {100}


def test_random_covers_all_replicas():
    pool = ServicePool.from_services([item(n) for n in range(1, 5)], policy="random", seed=3)
    counts = pick_counts(pool, 400)
    assert set(counts) == {uuid_of(n) for n in range(1, 5)}
    assert min(counts.values()) > 50


def test_least_inflight_sends_work_away_from_replica_holding_long_leases():
    pool = ServicePool.from_services([item(1), item(2), item(3)], seed=1)
    held = [pool.lease() for _ in range(30)]
    slow = uuid_of(1)
    for lease in held:  # replicas 2 and 3 finish fast; replica 1 keeps its long requests
        if lease.service.container_uuid != slow:
            lease.release()
    assert stats_by_uuid(pool)[slow]["inflight"] > 0
    counts = pick_counts(pool, 60)
    assert counts[slow] == 0  # any pair of two contains an idle replica
    assert counts[uuid_of(2)] > 10 and counts[uuid_of(3)] > 10


def simulate_mean_latency(policy: str) -> float:
    """Discrete-time run: one request every 0.6 s onto two fast replicas (1 s per
    request) and one slow one (4 s); each replica serves one request at a time."""
    pool = ServicePool.from_services([item(1), item(2), item(3)], policy=policy, seed=7)
    service_time = {uuid_of(1): 1.0, uuid_of(2): 1.0, uuid_of(3): 4.0}
    busy_until = dict.fromkeys(service_time, 0.0)
    running: list = []  # heap of (finish time, sequence, lease)
    latencies = []
    for sequence in range(500):
        now = sequence * 0.6
        while running and running[0][0] <= now:
            heapq.heappop(running)[2].release()
        lease = pool.lease()
        uuid = lease.service.container_uuid
        finish = max(now, busy_until[uuid]) + service_time[uuid]
        busy_until[uuid] = finish
        heapq.heappush(running, (finish, sequence, lease))
        latencies.append(finish - now)
    for _, _, lease in running:
        lease.release()
    assert all(row["inflight"] == 0 for row in pool.stats())
    return statistics.mean(latencies)


def test_least_inflight_beats_round_robin_on_unequal_speeds():
    least_inflight = simulate_mean_latency("least_inflight")
    round_robin = simulate_mean_latency("round_robin")
    # Round robin keeps feeding the slow replica a third of the work it cannot
    # keep up with, so its queue (and latency) grows without bound.
    assert least_inflight < 3.0
    assert round_robin > 10 * least_inflight


# ---- health, ejection, retries -------------------------------------------


def test_only_healthy_replicas_are_picked_and_missing_healthy_counts_as_healthy():
    no_flag = item(3)
    del no_flag["healthy"]
    pool = ServicePool.from_services([item(1, healthy=False), item(2), no_flag], seed=2)
    counts = pick_counts(pool, 100)
    assert set(counts) == {uuid_of(2), uuid_of(3)}


def test_empty_registry_raises_no_replica_available():
    pool = ServicePool.from_services([])
    with pytest.raises(NoReplicaAvailable, match="empty"):
        pool.lease()
    with pytest.raises(NoReplicaAvailable, match="unhealthy"):
        ServicePool.from_services([item(1, healthy=False)]).lease()


def test_failure_ejects_for_cool_down_then_replica_returns():
    clock = FakeClock()
    pool = ServicePool.from_services([item(1), item(2)], eject_seconds=30, clock=clock, seed=4)
    with pytest.raises(ConnectionError):
        with pool.lease(exclude=[uuid_of(2)]) as svc:
            assert svc.container_uuid == uuid_of(1)
            raise ConnectionError("replica 1 refused")
    row = stats_by_uuid(pool)[uuid_of(1)]
    assert (row["failed"], row["inflight"], row["ejected_until"]) == (1, 0, 30.0)
    assert set(pick_counts(pool, 20)) == {uuid_of(2)}
    clock.advance(29.9)
    assert set(pick_counts(pool, 20)) == {uuid_of(2)}
    clock.advance(0.2)
    assert stats_by_uuid(pool)[uuid_of(1)]["ejected_until"] is None
    assert uuid_of(1) in pick_counts(pool, 20)


def test_all_ejected_falls_back_to_least_recently_ejected():
    clock = FakeClock()
    pool = ServicePool.from_services([item(1), item(2)], clock=clock)
    for n in (2, 1):  # replica 2 fails first, so it was ejected longest ago
        lease = pool.lease(exclude=[uuid_of(3 - n)])
        lease.release(failed=True)
        clock.advance(1)
    assert set(pick_counts(pool, 5)) == {uuid_of(2)}


def test_call_retries_once_on_a_different_replica():
    pool = ServicePool.from_services([item(1), item(2), item(3)], seed=5)
    seen = []

    def flaky(svc):
        seen.append(svc.container_uuid)
        if len(seen) == 1:
            raise TimeoutError("first replica timed out")
        return "ok"

    assert pool.call(flaky, retries=1) == "ok"
    assert len(seen) == 2 and seen[0] != seen[1]
    rows = stats_by_uuid(pool)
    assert rows[seen[0]]["failed"] == 1 and rows[seen[0]]["ejected_until"] is not None
    assert rows[seen[1]]["completed"] == 1


def test_call_gives_up_with_the_request_error():
    single = ServicePool.from_services([item(1)])
    attempts = []

    def always_fails(svc):
        attempts.append(svc.container_uuid)
        raise ConnectionError("down")

    # Only one replica: it is not retried on itself; the real error surfaces.
    with pytest.raises(ConnectionError):
        single.call(always_fails, retries=1)
    assert attempts == [uuid_of(1)]

    attempts.clear()
    with pytest.raises(ConnectionError):
        ServicePool.from_services([item(1), item(2), item(3)]).call(always_fails, retries=0)
    assert len(attempts) == 1


def test_is_failure_false_neither_ejects_nor_retries():
    pool = ServicePool.from_services([item(1), item(2)], is_failure=lambda exc: not isinstance(exc, ValueError))
    calls = []

    def bad_input(svc):
        calls.append(svc)
        raise ValueError("HTTP 400: the caller's own bad input")

    with pytest.raises(ValueError):
        pool.call(bad_input, retries=1)
    assert len(calls) == 1
    assert all(row["failed"] == 0 and row["ejected_until"] is None for row in pool.stats())


# ---- identity and counters across registry changes -----------------------


def test_replica_leaving_mid_lease_keeps_counts_non_negative():
    pool = ServicePool.from_services([item(1), item(2)])
    lease = pool.lease(exclude=[uuid_of(2)])
    pool.update(registry(item(2)))  # replica 1 left the registry with a lease out
    draining = stats_by_uuid(pool)[uuid_of(1)]
    assert (draining["in_registry"], draining["inflight"]) == (False, 1)
    assert set(pick_counts(pool, 10)) == {uuid_of(2)}
    lease.release()
    assert uuid_of(1) not in stats_by_uuid(pool)
    assert all(row["inflight"] == 0 for row in pool.stats())

    pool.update(registry(item(1), item(2)))  # it comes back: fresh, nothing stale
    returned = stats_by_uuid(pool)[uuid_of(1)]
    assert (returned["inflight"], returned["completed"], returned["failed"]) == (0, 0, 0)


def test_replica_returning_while_its_lease_is_out_never_goes_negative():
    pool = ServicePool.from_services([item(1), item(2)])
    lease = pool.lease(exclude=[uuid_of(2)])
    pool.update([item(2)])
    pool.update([item(1), item(2)])  # back before the lease finished: that lease is real load
    assert stats_by_uuid(pool)[uuid_of(1)]["inflight"] == 1
    lease.release()
    row = stats_by_uuid(pool)[uuid_of(1)]
    assert (row["inflight"], row["completed"], row["in_registry"]) == (0, 1, True)


def test_releasing_a_lease_twice_counts_once():
    pool = ServicePool.from_services([item(1)])
    lease = pool.lease()
    lease.release()
    lease.release(failed=True)
    with pytest.raises(RuntimeError):
        with lease:
            raise RuntimeError("late failure after release")
    row = stats_by_uuid(pool)[uuid_of(1)]
    assert (row["inflight"], row["completed"], row["failed"], row["ejected_until"]) == (0, 1, 0, None)


def test_new_container_reusing_a_url_is_a_new_replica():
    shared_url = "http://127.0.0.1:6006"
    pool = ServicePool.from_services([item(1, url=shared_url)])
    pick_counts(pool, 3)
    pool.lease().release(failed=True)
    pool.update([item(7, url=shared_url)])
    rows = stats_by_uuid(pool)
    assert list(rows) == [uuid_of(7)]
    assert (rows[uuid_of(7)]["completed"], rows[uuid_of(7)]["failed"]) == (0, 0)
    assert rows[uuid_of(7)]["ejected_until"] is None


def test_container_whose_url_changes_keeps_its_counters():
    pool = ServicePool.from_services([item(1, url="http://10.0.0.1:6006")])
    pick_counts(pool, 2)
    pool.update([item(1, url="http://10.0.0.2:6006/")])
    with pool.lease() as svc:
        assert svc.url == "http://10.0.0.2:6006"  # trailing slash dropped for svc.url + "/path"
    assert stats_by_uuid(pool)[uuid_of(1)]["completed"] == 3


def test_malformed_items_are_skipped_and_non_registries_rejected():
    pool = ServicePool.from_services([item(1)])
    pool.update([item(2), {"url": "http://x"}, {"container_uuid": "c", "url": "ftp://x"},
                 {**item(3), "healthy": "false"}, "junk"])
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(2)]
    with pytest.raises(ValueError):
        pool.update({"status": "error", "message": "boom"})
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(2)]


# ---- sources: file and endpoint ------------------------------------------


def test_file_source_refreshes_on_change_at_most_every_interval(tmp_path):
    path = tmp_path / "registry.json"
    write_atomically(path, registry(item(1)))
    clock = FakeClock()
    pool = ServicePool.from_file(path, refresh_interval=2.0, clock=clock)
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(1)]

    write_atomically(path, registry(item(1), item(2)))
    clock.advance(1.0)
    pick_counts(pool, 1)  # a lease triggers the (rate-limited) refresh
    assert len(pool.services()) == 1
    clock.advance(1.5)
    pick_counts(pool, 1)
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(1), uuid_of(2)]
    assert pool.registry_info["deployment_uuid"] == DEPLOYMENT


def test_file_source_bad_or_missing_file_keeps_last_good_set(tmp_path):
    path = tmp_path / "registry.json"
    write_atomically(path, registry(item(1), item(2)))
    clock = FakeClock()
    pool = ServicePool.from_file(path, clock=clock)

    path.write_text('{"status": "success", "services": [{"contai', encoding="utf-8")  # half-written
    clock.advance(5)
    pool.refresh()
    assert len(pool.services()) == 2
    assert "JSONDecodeError" in pool.last_refresh_error

    path.unlink()
    clock.advance(5)
    assert len(pick_counts(pool, 10)) == 2
    assert "FileNotFoundError" in pool.last_refresh_error

    write_atomically(path, registry(item(3)))
    clock.advance(5)
    pool.refresh()
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(3)]
    assert pool.last_refresh_error is None


def test_file_that_is_json_but_not_a_registry_keeps_reporting_the_error(tmp_path):
    path = tmp_path / "registry.json"
    write_atomically(path, registry(item(1)))
    clock = FakeClock()
    pool = ServicePool.from_file(path, clock=clock)
    write_atomically(path, {"status": "error", "message": "watcher crashed"})
    for _ in range(2):  # the second look finds the file unchanged: still an error
        clock.advance(5)
        pool.refresh()
        assert "watcher crashed" in pool.last_refresh_error
    assert len(pool.services()) == 1


def test_file_that_failed_to_parse_is_read_again_even_if_stat_looks_unchanged(tmp_path):
    path = tmp_path / "registry.json"
    write_atomically(path, registry(item(1)))
    clock = FakeClock()
    pool = ServicePool.from_file(path, clock=clock)
    good = json.dumps(registry(item(2)))
    path.write_text(good[:-1] + " ", encoding="utf-8")  # truncated, same size
    mtime = path.stat().st_mtime_ns
    clock.advance(5)
    pool.refresh()
    assert pool.last_refresh_error is not None
    path.write_text(good, encoding="utf-8")  # same inode and size ...
    os.utime(path, ns=(mtime, mtime))  # ... and same mtime: only a re-read can tell
    clock.advance(5)
    pool.refresh()
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(2)]


def test_file_missing_at_start_explains_itself(tmp_path):
    pool = ServicePool.from_file(tmp_path / "nope.json")
    with pytest.raises(NoReplicaAvailable, match="FileNotFoundError"):
        pool.lease()


def test_stale_registry_is_still_used(tmp_path):
    path = tmp_path / "registry.json"
    write_atomically(path, registry(item(1), stale=True, stale_reason="HTTP 502"))
    pool = ServicePool.from_file(path)
    assert pool.registry_info["stale"] is True
    assert set(pick_counts(pool, 2)) == {uuid_of(1)}


@pytest.fixture
def registry_endpoint():
    """A discover_services-like endpoint on 127.0.0.1:0 serving state["body"]."""
    state = {"body": registry(item(1)), "code": 200, "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["hits"] += 1
            payload = json.dumps(state["body"]).encode()
            self.send_response(state["code"] if self.path == "/services" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    state["stop"] = lambda: (server.shutdown(), server.server_close())
    try:
        yield state
    finally:
        if thread.is_alive():
            server.shutdown()
            server.server_close()
        thread.join(timeout=5)


def test_endpoint_source_polls_and_keeps_last_good_when_down(registry_endpoint):
    clock = FakeClock()
    pool = ServicePool.from_endpoint(registry_endpoint["url"], timeout=1.0, refresh_interval=2.0, clock=clock)
    assert [svc.container_uuid for svc in pool.services()] == [uuid_of(1)]

    registry_endpoint["body"] = registry(item(1), item(2))
    hits = registry_endpoint["hits"]
    pick_counts(pool, 5)  # within the interval: no polling at all
    assert registry_endpoint["hits"] == hits
    clock.advance(2.0)
    pick_counts(pool, 1)
    assert len(pool.services()) == 2

    registry_endpoint["code"] = 503
    registry_endpoint["body"] = {"status": "error", "message": "watcher starting"}
    clock.advance(2.0)
    pool.refresh()
    assert len(pool.services()) == 2
    assert "503" in pool.last_refresh_error and "watcher starting" in pool.last_refresh_error

    registry_endpoint["stop"]()
    clock.advance(2.0)
    assert len(pick_counts(pool, 10)) == 2
    assert pool.last_refresh_error is not None


# ---- threads -------------------------------------------------------------


def test_many_threads_leasing_while_registry_churns():
    pool = ServicePool.from_services([item(n) for n in range(1, 5)], seed=9)
    threads_count, leases_per_thread = 8, 200
    start = threading.Barrier(threads_count + 1)
    done = threading.Event()
    outcomes = Counter()
    outcomes_lock = threading.Lock()

    def worker(index: int):
        start.wait()
        for number in range(leases_per_thread):
            try:
                with pool.lease():
                    if (index + number) % 10 == 0:
                        raise OSError("simulated replica failure")
                outcome = "completed"
            except OSError:
                outcome = "failed"
            with outcomes_lock:
                outcomes[outcome] += 1

    def churn():  # replicas leave and come back while leases are out
        start.wait()
        sets = ([item(1), item(2), item(3), item(4)], [item(2), item(3)], [item(1), item(4), item(5)])
        turn = 0
        while not done.is_set():
            pool.update(sets[turn % len(sets)])
            turn += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
    churner = threading.Thread(target=churn)
    for thread in (*workers, churner):
        thread.start()
    for thread in workers:
        thread.join(timeout=60)  # a bound for a hang, far past a loaded machine's second
    done.set()
    churner.join(timeout=60)

    total = threads_count * leases_per_thread
    assert sum(outcomes.values()) == total and outcomes["failed"] == total // 10
    rows = pool.stats()
    assert all(row["inflight"] == 0 for row in rows)
    assert all(row["in_registry"] for row in rows)  # nothing left draining


class RecordingLock:
    """A threading.Lock that counts how often it was taken."""

    def __init__(self):
        self._lock = threading.Lock()
        self.acquisitions = 0

    def __enter__(self):
        self._lock.acquire()
        self.acquisitions += 1
        return self

    def __exit__(self, *exc_info):
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


def test_selection_and_counters_under_the_lock_and_source_io_outside_it():
    # Stress tests cannot prove a lock is there (the GIL hides most races),
    # so check where the lock is held directly.
    pool = ServicePool.from_services([item(1), item(2)], refresh_interval=0)
    pool._lock = lock = RecordingLock()
    lock_held = {}
    pick = pool._pick

    def checked_pick(excluded):
        lock_held["pick"] = lock.locked()
        return pick(excluded)

    def source():
        lock_held["source"] = lock.locked()
        return [item(1), item(2)]

    pool._pick, pool._source = checked_pick, source
    lease = pool.lease()
    assert lock_held == {"pick": True, "source": False}
    before_release = lock.acquisitions
    lease.release()
    assert lock.acquisitions == before_release + 1


def test_eight_threads_static_set_totals_match():
    pool = ServicePool.from_services([item(n) for n in range(1, 4)], eject_seconds=0)

    def worker():
        for _ in range(200):
            with pool.lease():
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)  # a bound for a hang, far past a loaded machine's second
    rows = pool.stats()
    assert all(row["inflight"] == 0 for row in rows)
    assert sum(row["completed"] for row in rows) == 1600


# ---- registry schema -----------------------------------------------------


def schema_errors(document) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [error.message for error in validator.iter_errors(document)]


def test_schema_is_valid_and_its_examples_validate():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for example in SCHEMA["examples"]:
        assert schema_errors(example) == []


@pytest.mark.parametrize("document", [
    registry(item(1), item(2)),
    registry(),
    registry({**item(1), "url": "https://region-1.autodl.com:21294", "gpu_name": None}),
    registry(item(1), stale=True, stale_reason="HTTP 502", resynced_at="2026-11-25T11:00:00Z"),
    {"status": "success", "deployment_uuid": "833f1cd5a764fa3", "generated_at": "2026-11-25T12:00:00+08:00",
     "services": [{"container_uuid": "833f1cd5a764fa3-f94411a60c-a394fb30",
                   "url": "http://127.0.0.1:5000/svc/833f1cd5a764fa3-f94411a60c-a394fb30",
                   "machine_id": "f94411a60c", "gpu_name": "RTX 4090",
                   "since": "2026-11-25T11:59:00+08:00", "healthy": True}]},
])
def test_registry_examples_validate(document):
    assert schema_errors(document) == []
    ServicePool.from_services([]).update(document)  # and the pool accepts them


@pytest.mark.parametrize("change", [
    {"deployment_uuid": "833f1cd5a764fa"},
    {"generated_at": "2026-11-25 12:00"},
    {"status": "error"},
    {"stale": True},  # stale without stale_reason
    {"services": [{**item(1), "container_uuid": "833f1cd5a764fa3-f94411a60c"}]},
    {"services": [{**item(1), "machine_id": "F94411A60C"}]},
    {"services": [{**item(1), "url": "ftp://host/x"}]},
    {"services": [{**item(1), "healthy": "true"}]},
    {"services": [{**item(1), "weight": 2}]},
    {"services": [{key: value for key, value in item(1).items() if key != "url"}]},
])
def test_schema_rejects_malformed_registries(change):
    assert schema_errors({**registry(item(1)), **change}) != []


def test_module_uses_only_the_standard_library():
    source = (ROOT / "scripts" / "autodl_esd" / "serving" / "pool.py").read_text(encoding="utf-8")
    assert "from ." not in source  # copyable on its own
    for third_party in ("requests", "jsonschema", "dotenv"):
        assert f"import {third_party}" not in source


@pytest.mark.parametrize("argv", [["--help"], []])
def test_running_the_module_prints_its_usage(argv):
    # It is a library; run as a script it must say so and show the usage, not exit silently.
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "service_pool.py"), *argv],
        capture_output=True, text=True, encoding="utf-8", timeout=30,
    )
    assert done.returncode == 0
    assert "库" in done.stdout and "ServicePool.from_file" in done.stdout


def test_warnings_go_to_the_logger_given(caplog):
    import logging

    mine = logging.getLogger("test_service_pool.mine")
    pool = ServicePool.from_services([], logger=mine)
    with caplog.at_level("WARNING"):
        pool.update({"services": [], "stale": True, "stale_reason": "api down"})
    assert [(record.name, "stale" in record.getMessage()) for record in caplog.records] == [("test_service_pool.mine", True)]
