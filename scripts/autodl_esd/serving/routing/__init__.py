"""Getting a request to a replica: where replicas come from (sources), which one takes it
(policies, load reports), what is in flight (ledgers, the replica table), and the HTTP gateway
with its metrics.

Imports nothing itself: `ServicePool.from_redis` reaches `routing.redis_pool` without aiohttp.
"""
