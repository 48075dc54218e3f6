"""`coxp demo`: a small origin that knows nothing about cross-origin headers, and coxp in front.

The page is opened from the origin's own address (http://localhost:ORIGIN_PORT), so its calls to
the proxy (http://127.0.0.1:PORT) are cross-origin and the browser applies CORS to them; the
isolated page is opened through the proxy, which adds COOP and COEP.
"""
from __future__ import annotations

import asyncio
import importlib.resources
import socket
import sys

from aiohttp import web

from proxy import logs
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.server import install_event_loop, serve

INDEX = """<!doctype html>
<meta charset="utf-8">
<title>coxp demo</title>
<style>body{font:15px system-ui;max-width:46rem;margin:2rem auto}pre{background:#f4f4f4;padding:.6rem}</style>
<h1>coxp demo</h1>
<p>This page comes from <b>the origin</b> at <code id="here"></code>. The buttons call the API
<b>through coxp</b> at <code>PROXY</code>, a different origin, so the browser enforces CORS;
the origin itself sends no CORS headers at all.</p>
<button id="get">GET /api/hello</button>
<button id="put">PUT /api/echo (preflighted)</button>
<button id="creds">GET /api/whoami with credentials</button>
<pre id="out">results appear here</pre>
<p>The third button sends cookies (<code>credentials: "include"</code>). The <code>api</code> route
allows the page's origin but not credentials (<code>allow_credentials</code> is off), so coxp sends
no <code>Access-Control-Allow-Credentials</code> and the browser hides the response: CORS decides
what a page may <em>read</em>; the request itself still reached the origin.</p>
<p><a href="PROXY/isolated/">Open the cross-origin isolated page through coxp</a> (COOP + COEP),
or <a href="/isolated/">the same page straight from the origin</a> (not isolated).</p>
<script>
document.getElementById("here").textContent = location.origin;
const out = document.getElementById("out");
async function show(promise) {
  try { const r = await promise; out.textContent = r.status + " " + await r.text(); }
  catch (e) { out.textContent = "blocked by the browser: " + e; }
}
document.getElementById("get").onclick = () => show(fetch("PROXY/api/hello"));
document.getElementById("put").onclick = () => show(fetch("PROXY/api/echo", {method: "PUT",
  headers: {"Content-Type": "application/json", "X-Demo": "1"}, body: JSON.stringify({hello: "coxp"})}));
document.getElementById("creds").onclick = () => show(fetch("PROXY/api/whoami", {credentials: "include"}));
</script>
"""

ISOLATED = """<!doctype html>
<meta charset="utf-8">
<title>cross-origin isolation</title>
<h1>crossOriginIsolated: <span id="v"></span></h1>
<p>SharedArrayBuffer available: <span id="sab"></span></p>
<script>
document.getElementById("v").textContent = String(self.crossOriginIsolated);
document.getElementById("sab").textContent = String(typeof SharedArrayBuffer === "function");
</script>
"""


def demo_origin(proxy_url: str) -> web.Application:
    async def index(_: web.Request) -> web.Response:
        return web.Response(text=INDEX.replace("PROXY", proxy_url), content_type="text/html")

    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": "from the origin", "note": "no CORS headers were sent by me"})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"you_sent": await request.text()})

    async def whoami(request: web.Request) -> web.Response:
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("demo", "1", samesite="None", secure=False)
        return response

    async def isolated(_: web.Request) -> web.Response:
        return web.Response(text=ISOLATED, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/hello", hello)
    app.router.add_put("/api/echo", echo)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/isolated/", isolated)
    return app


def demo_config_path() -> str:
    return str(importlib.resources.files("proxy").joinpath("demo.toml"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _run(port: int) -> int:
    port = port or _free_port()  # --port 0: a free one, known before the page embeds the URL
    origin_port = _free_port()
    proxy_url = f"http://127.0.0.1:{port}"
    path = demo_config_path()
    overrides = {"proxy": {"listen": f"127.0.0.1:{port}", "upstream": f"http://127.0.0.1:{origin_port}"}}
    try:
        config = load_config(path, overrides)
    except ConfigError as error:
        print("\n".join(error.lines()), file=sys.stderr)
        return 2
    logs.configure("console", config.log.level)
    runner = web.AppRunner(demo_origin(proxy_url), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", origin_port).start()
    print(
        f"""
coxp demo
  demo origin  http://127.0.0.1:{origin_port}  (a backend that sends no cross-origin headers)
  coxp         {proxy_url}  (config: {path})

Open http://localhost:{origin_port}/ in a browser: the page calls the API through coxp from
another origin; every decision is logged below. Then try, in another terminal:
  coxp explain -c {path} -X OPTIONS -H 'Origin: http://localhost:3000' \\
      -H 'Access-Control-Request-Method: PUT' {proxy_url}/api/echo
Stop with Ctrl-C.
""",
        flush=True,
    )
    try:
        return await serve(config, path, overrides)
    finally:
        await runner.cleanup()


def run_demo(port: int) -> int:
    install_event_loop()
    return asyncio.run(_run(port))
