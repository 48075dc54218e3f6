"""`coxp demo`: a small origin that knows nothing about cross-origin headers, coxp in front, and a
page that shows, one panel per scenario, what each header coxp sets makes the browser do.

The page is opened from the demo origin's own address (http://localhost:ORIGIN_PORT), so its
calls to coxp (http://localhost:PORT, another port) are cross-origin and the browser applies
CORS, CORP and COEP to them. Both are `localhost`, hence the same site, so cookies work. The
page learns coxp's decision for each of its requests from `/demo/log` on the demo origin, fed
by the decision log of the coxp running in this process.
"""
from __future__ import annotations

import asyncio
import importlib.resources
import itertools
import json
import os
import shlex
import shutil
import struct
import sys
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from proxy import logs
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.listeners import bind_listeners
from proxy.model import Endpoint
from proxy.process import install_event_loop, serve

SITE = importlib.resources.files("proxy").joinpath("demo_site")
KEPT = 200  # decisions, reports and isolation results the page can still read


def _png(size: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid square PNG (no image library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")


LOGO = _png(32, (0x2b, 0x6c, 0xd4))


class DemoLog:
    """What the page reads from `/demo/log`: coxp's `request` decisions and the `report` events of
    its report collector (both captured from the decision log), and the isolated window's findings."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self.last = 0
        self.decisions: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self.isolation: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self.reports: deque[dict[str, Any]] = deque(maxlen=KEPT)

    def add(self, kind: deque[dict[str, Any]], entry: dict[str, Any]) -> None:
        self.last = next(self._seq)
        kind.append({**entry, "seq": self.last})

    def capture(self, event: Mapping[str, Any]) -> None:
        """Sees every event before it is rendered (`proxy.logs.configure`'s `observe`) and keeps
        the request decisions and reports."""
        kind = event.get("event")
        if kind == "request":
            self.add(self.decisions, {key: event.get(key) for key in (
                "route", "method", "path", "origin", "cors", "reason", "headers_set", "headers_removed", "status",
                "warnings")})
        elif kind == "report":
            self.add(self.reports, {key: event.get(key) for key in ("type", "url", "disposition", "blocked_url")})

    def since(self, seq: int) -> dict[str, Any]:
        def after(entries: deque[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in entries if e["seq"] > seq]
        return {"seq": self.last, "decisions": after(self.decisions), "isolation": after(self.isolation),
                "reports": after(self.reports)}


def coxp_command() -> str:
    """How to run this same coxp from a shell: the console script by its absolute path (it need
    not be on PATH, e.g. in a virtualenv), else this Python with `-m proxy`."""
    program = sys.argv[0]
    found = program if os.sep in program else shutil.which(program)
    if found and os.path.basename(found) == "coxp":
        return shlex.quote(os.path.abspath(found))
    return shlex.join([sys.executable, "-m", "proxy"])


def demo_origin(settings: dict[str, str], log: DemoLog) -> web.Application:
    """The demo origin: the page (served directly) and the files and API coxp fronts."""
    def static(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(text=SITE.joinpath(name).read_text(encoding="utf-8"), content_type=content_type)
        return handler

    async def index(_: web.Request) -> web.Response:
        page = SITE.joinpath("index.html").read_text(encoding="utf-8")
        # "</" cannot end the JSON's <script> element early once escaped.
        data = json.dumps(settings).replace("</", "<\\/")
        return web.Response(text=page.replace("{{DEMO_SETTINGS}}", data), content_type="text/html")

    async def read_log(request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be an integer") from None
        return web.json_response(log.since(since), headers={"Cache-Control": "no-store"})

    async def logo(_: web.Request) -> web.Response:
        return web.Response(body=LOGO, content_type="image/png")

    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": "from the origin", "note": "no CORS headers were sent by me"})

    async def headers(_: web.Request) -> web.Response:
        return web.json_response({"see": "the response headers"},
                                 headers={"X-Request-Id": "req-4711", "X-Internal-Build": "b1234"})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"you_sent": await request.text()})

    async def partner(_: web.Request) -> web.Response:
        return web.json_response({"for": "partner.example.test only"})

    async def login(_: web.Request) -> web.Response:
        response = web.json_response({"signed_in": "demo"})
        response.set_cookie("demo_session", "demo", httponly=True, samesite="Lax", path="/")
        return response

    async def me(request: web.Request) -> web.Response:
        if request.cookies.get("demo_session") != "demo":
            return web.json_response({"user": None, "why": "no session cookie arrived"}, status=401)
        return web.json_response({"user": "demo"})

    async def isolation_result(request: web.Request) -> web.Response:
        found = await _json_object(request)
        log.add(log.isolation, {"isolated": found.get("isolated") is True,
                                "shared_array_buffer": found.get("shared_array_buffer") is True})
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/", index)
    app.router.add_get("/demo.js", static("demo.js", "text/javascript"))
    app.router.add_get("/demo.css", static("demo.css", "text/css"))
    app.router.add_get("/assets/demo.css", static("demo.css", "text/css"))
    app.router.add_get("/assets/images.js", static("images.js", "text/javascript"))
    app.router.add_get("/demo/log", read_log)
    for path in ("/logo.png", "/assets/logo.png", "/private-assets/logo.png"):
        app.router.add_get(path, logo)
    app.router.add_get("/api/hello", hello)
    app.router.add_get("/api/headers", headers)
    app.router.add_put("/api/echo", echo)
    app.router.add_get("/partner/data", partner)
    app.router.add_post("/account/login", login)
    app.router.add_get("/account/me", me)
    app.router.add_get("/isolated/", static("isolated.html", "text/html"))
    app.router.add_post("/isolated/result", isolation_result)
    app.router.add_get("/isolated/embed.html", static("embed.html", "text/html"))
    app.router.add_get("/report-only/frame.html", static("report-frame.html", "text/html"))
    return app


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        found = json.loads(await request.text())
    except ValueError:
        raise web.HTTPBadRequest(text="not JSON") from None
    return found if isinstance(found, dict) else {}


def demo_config_path() -> str:
    return str(importlib.resources.files("proxy").joinpath("demo.toml"))


async def _run(port: int) -> int:
    path = demo_config_path()
    log = DemoLog()
    settings = {"coxp": coxp_command(), "config": path, "proxy": ""}
    runner = web.AppRunner(demo_origin(settings, log), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # The page is opened as http://localhost:ORIGIN_PORT: listen where browsers look for it.
        origin_sockets = bind_listeners(Endpoint("localhost", 0))
        for sock in origin_sockets:
            await web.SockSite(runner, sock).start()
        origin_port = origin_sockets[0].getsockname()[1]
        overrides = {"proxy": {"listen": f"localhost:{port}", "upstream": f"http://127.0.0.1:{origin_port}"}}
        try:
            config = load_config(path, overrides)
        except ConfigError as error:
            print("\n".join(error.lines()), file=sys.stderr)
            return 2
        logs.configure("console", config.log.level, observe=log.capture)

        def announce(address: str) -> None:
            settings["proxy"] = f"http://{address}"  # before the first request: the page needs it
            print(_banner(origin_port, settings), flush=True)

        return await serve(config, path, overrides, announce=announce)
    finally:
        await runner.cleanup()


def _banner(origin_port: int, settings: dict[str, str]) -> str:
    page = f"http://localhost:{origin_port}/"
    return f"""
coxp demo
  open        {page}   (the demo page: one panel per cross-origin scenario)
  demo origin http://127.0.0.1:{origin_port}   (a backend that sends no cross-origin headers)
  coxp        {settings["proxy"]}   (config: {settings["config"]})

Every decision is logged below. To see the exact headers coxp sets for one request, in another
terminal:
  {settings["coxp"]} explain -c {shlex.quote(settings["config"])} -X OPTIONS \\
      -H 'Origin: http://localhost:{origin_port}' -H 'Access-Control-Request-Method: PUT' \\
      -H 'Access-Control-Request-Headers: content-type, x-demo' {settings["proxy"]}/api/echo
Stop with Ctrl-C.
"""


def run_demo(port: int) -> int:
    install_event_loop()
    return asyncio.run(_run(port))
