"""The admin listener: /healthz, /metrics (Prometheus text), /config (the effective config)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.model import Endpoint

if TYPE_CHECKING:
    from proxy.server import ProxyServer


async def start_admin(server: "ProxyServer", listen: Endpoint) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        status = 503 if server.stopping else 200
        return web.Response(status=status, text="stopping\n" if server.stopping else "ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=server.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def config(_: web.Request) -> web.Response:
        body = orjson.dumps(server.state.config.effective, option=orjson.OPT_INDENT_2, default=str)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
    return runner


def bound_address(runner: web.AppRunner) -> str:
    """The address the admin listener actually bound (`listen = "127.0.0.1:0"` picks a port)."""
    host, port = runner.addresses[0][:2]
    return str(Endpoint(host, port))
