"""The local-development journey in Chromium: a page on http://localhost:PORT1 calls a cookie-login
API behind `coxp dev`, reached as http://localhost:PORT2 (as its banner says). Login, then a
credentialed GET and a PUT with a custom header all succeed. Called as 127.0.0.1 instead, the
session cookie is lost: the reason the banner insists on localhost."""

from __future__ import annotations

import secrets

import pytest
from conftest import Server

from harness import Coxp, free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

JOURNEY_JS = """
async (api) => {
  const steps = {};
  const login = await fetch(api + "/login", {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({user: "ada", password: "pw"})});
  steps.login = login.status;
  const me = await fetch(api + "/me", {credentials: "include"});
  steps.me = [me.status, await me.json(), me.headers.get("X-Request-Id")];
  const put = await fetch(api + "/items/7", {method: "PUT", credentials: "include",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": "t0k"}, body: JSON.stringify({name: "seven"})});
  steps.put = [put.status, await put.json()];
  return steps;
}
"""


@pytest.fixture
def login_api(loop):
    """A cookie-session API as Express apps write it: SameSite=Lax session cookie, 401 without it."""
    from aiohttp import web

    sessions: dict[str, str] = {}
    seen: list[tuple[str, str, str | None]] = []

    def user(request: web.Request) -> str | None:
        return sessions.get(request.cookies.get("sid", ""))

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        sid = secrets.token_hex(8)
        sessions[sid] = body["user"]
        response = web.json_response({"ok": True})
        response.set_cookie("sid", sid, httponly=True, samesite="Lax", path="/")
        return response

    async def me(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers.get("Cookie")))
        if user(request) is None:
            return web.json_response({"error": "not signed in"}, status=401)
        return web.json_response({"user": user(request)}, headers={"X-Request-Id": "req-1"})

    async def put_item(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers.get("X-CSRF-Token")))
        if user(request) is None:
            return web.json_response({"error": "not signed in"}, status=401)
        return web.json_response({"id": request.match_info["id"], **await request.json(), "by": user(request)})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/me", me)
    app.router.add_put("/items/{id}", put_item)
    server = Server(loop, app)
    server.seen = seen  # type: ignore[attr-defined]
    yield server
    server.close()


@pytest.fixture
def dev(tmp_path, login_api):
    process = Coxp(["-m", "proxy", "dev", "--upstream", login_api.origin_for_coxp, "--listen", f"localhost:{free_port()}",
                    "--expose-header", "X-Request-Id", "--log-format", "json"], cwd=tmp_path).start()
    yield process
    assert process.stop() == 0


def test_login_then_credentialed_get_and_put_work_through_coxp_dev_on_localhost(dev, pages, page, login_api):
    assert dev.listen.startswith("localhost:")
    page.goto(pages.url("localhost", "/app"))
    steps = page.evaluate(JOURNEY_JS, f"http://localhost:{dev.port}")
    assert steps == {
        "login": 200,
        "me": [200, {"user": "ada"}, "req-1"],
        "put": [200, {"id": "7", "name": "seven", "by": "ada"}],
    }
    assert ("PUT", "/items/7", "t0k") in login_api.seen
    preflights = dev.events_named("request", method="OPTIONS")
    assert {e["cors"] for e in preflights} == {"preflight-allowed"}


def test_the_same_calls_via_127_0_0_1_lose_the_session_cookie(dev, pages, page):
    """localhost:PORT1 and 127.0.0.1:PORT2 are different sites: Chromium refuses the SameSite=Lax
    cookie of a cross-site response, so /me is 401 although every CORS decision was allowed."""
    page.goto(pages.url("localhost", "/app"))
    steps = page.evaluate(JOURNEY_JS, f"http://127.0.0.1:{dev.port}")
    assert steps["login"] == 200 and steps["me"][0] == 401
    assert {e["cors"] for e in dev.events_named("request") if e["method"] != "OPTIONS"} == {"allowed"}
