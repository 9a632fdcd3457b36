"""Runs a gateway (and small aiohttp upstreams) on an event loop in a background thread, so
tests can talk to it with blocking clients. Everything binds 127.0.0.1 port 0. The fixture
`loop_thread` (conftest.py) gives a test one and closes it after."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable

from aiohttp import web


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()
        self._cleanups: list[Callable[[], Awaitable[Any]]] = []

    def run(self, coroutine: Awaitable[Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapper():
            return fn()

        return self.run(wrapper())

    def upstream(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> str:
        """A one-route aiohttp server answering every path with `handler`; returns its URL."""

        async def start():
            app = web.Application(client_max_size=64 * 1024 * 1024)  # large-body tests
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._cleanups.append(runner.cleanup)
            host, port = runner.addresses[0][:2]
            return f"http://{host}:{port}"

        return self.run(start())

    def gateway(self, source: Any, **options: Any) -> Any:
        from autodl_esd.serving.routing.gateway import Gateway, GatewayOptions

        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("interval", 0.1)
        options.setdefault("seed", 1)
        log = options.pop("log", None)
        routes = options.pop("routes", None)  # [(name, source, {"model"|"prefix": ..., route option overrides})]
        gateway_options = GatewayOptions(**options)
        if routes is not None:
            gateway = Gateway(None, gateway_options, routes=[self._route(gateway_options, *route) for route in routes], log=log)
        else:
            gateway = Gateway(source, gateway_options, log=log)
        self.run(gateway.start())
        self._cleanups.insert(0, gateway.stop)
        return gateway

    @staticmethod
    def _route(options: Any, name: str, source: Any, settings: dict[str, Any]) -> Any:
        import random

        from autodl_esd.serving.routing.routes import Route

        match = {key: settings.pop(key) for key in ("model", "prefix") if key in settings}
        return Route(name, source, options.route_options(**settings), rng=random.Random(options.seed), **match)

    def close(self) -> None:
        for cleanup in self._cleanups:
            try:
                self.run(cleanup())
            except Exception:
                pass
        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_the_rest())
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def item(uuid: str, url: str, healthy: bool = True) -> dict[str, Any]:
    return {"container_uuid": uuid, "url": url, "machine_id": None, "gpu_name": None,
            "since": "2026-01-01T00:00:00+08:00", "healthy": healthy}
