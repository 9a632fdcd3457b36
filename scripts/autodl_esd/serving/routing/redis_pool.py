"""`ServicePool.from_redis`: a client pool that follows the Redis registry by notification
and, with `shared_inflight=True`, counts its leases in Redis with every other client.

The copyable pool (serving/pool.py) imports this module only when `from_redis` is called;
it imports neither the pool nor `sources` (which reads through the pool), so the graph stays
one-way.
"""

from __future__ import annotations

from typing import Any, Optional

from ..registry.redis_store import DEFAULT_KEY_PREFIX, RedisKeys, RegistrySubscription, connect
from .ledgers import DEFAULT_LEASE_TTL_SECONDS, SharedInflight


def pool_from_redis(pool_class: Any, url: str, deployment_uuid: str, key_prefix: str = DEFAULT_KEY_PREFIX,
                    shared_inflight: bool = False, lease_ttl: float = DEFAULT_LEASE_TTL_SECONDS, **kwargs: Any) -> Any:
    """A ServicePool following the Redis registry by notification (see ServicePool.from_redis)."""
    client = connect(url)
    keys = RedisKeys(deployment_uuid, key_prefix)
    shared = SharedInflight(client, keys, lease_ttl) if shared_inflight else None
    if shared is not None:
        kwargs["shared_inflight"] = shared
    pool = pool_class(**kwargs)

    def consume(document: dict[str, Any]) -> None:
        try:
            pool.update(document)
        except ValueError as problem:
            pool.last_refresh_error = f"ValueError: {problem}"

    def report(message: Optional[str]) -> None:
        pool.source_failed(message, "service registry in Redis unavailable")

    subscription = RegistrySubscription(client, keys, consume, report).start()
    pool.subscription = subscription
    pool.add_closer(client.close)  # closers run last-added first: stop following, then disconnect
    if shared is not None:
        pool.add_closer(shared.close)
    pool.add_closer(subscription.close)
    return pool
