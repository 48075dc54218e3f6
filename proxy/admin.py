"""The admin listener: /healthz, /readyz, /metrics (Prometheus text), /config, POST /reload."""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.errors import ListenError
from proxy.model import Endpoint

if TYPE_CHECKING:
    from proxy.metrics import Metrics
    from proxy.server import ProxyServer


def _state(up: bool, up_text: str) -> web.Response:
    return web.Response(status=200 if up else 503, text=f"{up_text}\n" if up else "stopping\n")


async def start_admin(server: ProxyServer, metrics: Metrics, listen: Endpoint,
                      sock: socket.socket | None = None) -> web.AppRunner:
    """Serve the admin endpoints on `listen`, or on `sock` when the workers' parent bound it."""

    async def healthz(_: web.Request) -> web.Response:
        return _state(not server.stopping, "ok")

    async def readyz(_: web.Request) -> web.Response:
        return _state(server.ready, "ready")

    async def read_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def config(_: web.Request) -> web.Response:
        body = orjson.dumps(server.state.config.effective, option=orjson.OPT_INDENT_2, default=str)
        return web.Response(body=body, content_type="application/json")

    async def reload(_: web.Request) -> web.Response:
        result = server.reload_everywhere()
        if result.ok:
            return _json(200, {"reloaded": True, "sha256": result.sha256, "restart_needed": list(result.restart_needed)})
        return _json(422, {"reloaded": False, "errors": list(result.errors)})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", read_metrics)
    app.router.add_get("/config", config)
    app.router.add_post("/reload", reload)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if sock is not None:
        await web.SockSite(runner, sock).start()
    else:
        try:
            await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
        except OSError as error:
            await runner.cleanup()
            raise ListenError(error, listen, "serve admin") from None
    return runner


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body) + b"\n", content_type="application/json")


def bound_address(runner: web.AppRunner) -> str:
    """The address the admin listener actually bound (`listen = "127.0.0.1:0"` picks a port)."""
    host, port = runner.addresses[0][:2]
    return str(Endpoint(host, port))
