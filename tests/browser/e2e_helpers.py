"""In-page JavaScript helpers and host names shared by the browser tests (imported by conftest and tests)."""

from __future__ import annotations

from harness import free_port  # noqa: F401  (pytest puts tests/ on sys.path for tests/conftest.py)

# Host names used by the scenarios. ``example.test`` is one site; ``other.test`` is another.
APP = "app.example.test"
API = "api.example.test"
OTHER_SAME_SITE = "other.example.test"
EVIL = "evil.other.test"
IMG_OTHER_SITE = "img.other.test"
TEST_HOSTS = [APP, API, OTHER_SAME_SITE, EVIL, IMG_OTHER_SITE]

PW_TIMEOUT_MS = 10_000


# --------------------------------------------------------------------------------------------
# in-page helpers
# --------------------------------------------------------------------------------------------

FETCH_JS = """
async ([url, init]) => {
  try {
    const r = await fetch(url, init || {});
    const headers = {};
    r.headers.forEach((v, k) => { headers[k] = v; });
    const text = await r.text();
    return {ok: true, status: r.status, headers, text};
  } catch (e) {
    return {ok: false, error: e.name, message: String(e.message || e)};
  }
}
"""

IMG_JS = """
(url) => new Promise((resolve) => {
  const img = new Image();
  const t = setTimeout(() => resolve({loaded: false, why: "timeout"}), 8000);
  img.onload = () => { clearTimeout(t); resolve({loaded: true, width: img.naturalWidth, height: img.naturalHeight}); };
  img.onerror = () => { clearTimeout(t); resolve({loaded: false, why: "error", width: img.naturalWidth}); };
  img.src = url;
  document.body.appendChild(img);
})
"""

WS_JS = """
(url) => new Promise((resolve) => {
  const events = [];
  let ws;
  try { ws = new WebSocket(url); } catch (e) { resolve({opened: false, events: ["throw:" + e]}); return; }
  const t = setTimeout(() => { events.push("timeout"); resolve({opened: false, events}); }, 8000);
  ws.onopen = () => { events.push("open"); ws.send("ping-42"); };
  ws.onmessage = (m) => { events.push("message:" + m.data); clearTimeout(t); ws.close(); resolve({opened: true, reply: m.data, events}); };
  ws.onerror = () => { events.push("error"); };
  ws.onclose = (c) => { events.push("close:" + c.code); clearTimeout(t); resolve({opened: events.includes("open"), events}); };
})
"""

ISOLATION_JS = """
() => ({
  isSecureContext: self.isSecureContext,
  crossOriginIsolated: self.crossOriginIsolated,
  sharedArrayBuffer: typeof SharedArrayBuffer,
})
"""


def page_fetch(page, url: str, init: dict | None = None) -> dict:
    return page.evaluate(FETCH_JS, [url, init or {}])


def load_img(page, url: str) -> dict:
    return page.evaluate(IMG_JS, url)


def ws_roundtrip(page, url: str) -> dict:
    return page.evaluate(WS_JS, url)


def isolation_state(page) -> dict:
    return page.evaluate(ISOLATION_JS)


def q(value) -> str:
    """A TOML literal for a string or a list of strings (JSON's syntax is valid TOML for these)."""
    import json

    return json.dumps(value)


def diag(coxp=None, upstream=None, page=None, result=None) -> str:
    """Context for an assertion message: what the page got, what coxp decided, what the upstream saw."""
    import json

    parts = []
    if result is not None:
        parts.append(f"page result: {result!r}")
    if coxp is not None:
        evs = [e for e in coxp.events if e.get("event") != "listening"][-8:]
        parts.append("coxp events:\n  " + "\n  ".join(json.dumps(e, sort_keys=True) for e in evs))
        err = coxp.stderr().strip()
        if err:
            parts.append("coxp stderr (tail):\n" + err[-1500:])
    if upstream is not None:
        parts.append("upstream saw: " + ", ".join(f"{r.method} {r.path}" for r in upstream.requests))
    if page is not None and getattr(page, "console_messages_seen", None):
        parts.append("console: " + " | ".join(page.console_messages_seen[-8:]))
    return "\n".join(parts)
