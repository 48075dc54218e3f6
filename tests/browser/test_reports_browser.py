"""A real report from Chromium to coxp's built-in collector.

A page served through coxp over TLS (browsers only deliver reports from secure pages) carries
COEP `require-corp` report-only with `report-to` naming the relative endpoint `/.coxp/reports`;
it embeds an image from another site that sends no `Cross-Origin-Resource-Policy`. The image
still loads (report-only), Chromium files a `coep` report and delivers it to the collector on
the page's own origin: it appears as a `report` event, and `coxp report` lists the blocked
image with the suggested fix.
"""
from __future__ import annotations

import json
import time

import pytest

from e2e_helpers import APP, IMG_JS, IMG_OTHER_SITE, PW_TIMEOUT_MS
from harness import run_cli

pytestmark = pytest.mark.browser

# Chromium delivers queued reports once a minute by default; this switch (used by the web
# platform tests) makes it every 100 ms. Closing the page's context flushes what is left.
SHORT_REPORTING_DELAY = "--short-reporting-delay"
REPORT_WAIT_S = 20.0

CONFIG = """
[reports]

[[routes]]
name = "pages"
[routes.coep]
policy = "require-corp"
report_only = true
report_to = "default"
[routes.reporting]
endpoints = { default = "/.coxp/reports" }
"""


@pytest.fixture
def reporting_browser(launch_chromium):
    """A Chromium of its own: the session's has no short reporting delay."""
    own = launch_chromium(SHORT_REPORTING_DELAY)
    try:
        yield own
    finally:
        own.close()


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    return predicate()


def test_chromium_delivers_a_coep_report_to_the_collector(reporting_browser, pages, tls_pages, coxp, tmp_path):
    proxy = coxp(CONFIG, upstream=pages.origin_for_coxp, tls_on=True)
    image = tls_pages.url(IMG_OTHER_SITE, "/no-corp.png")  # another site, no CORP header

    context = reporting_browser.new_context()
    context.set_default_timeout(PW_TIMEOUT_MS)
    page = context.new_page()
    page_url = proxy.url(APP, "/page")
    response = page.goto(page_url)
    assert response.status == 200
    assert response.headers["cross-origin-embedder-policy-report-only"] == 'require-corp; report-to="default"'
    assert response.headers["reporting-endpoints"] == 'default="/.coxp/reports"'
    # report-only: the page is not isolated, the image loads, and the violation is reported
    assert page.evaluate(IMG_JS, image)["loaded"] is True

    def coep_reports():
        return [e for e in proxy.events if e.get("event") == "report" and e.get("type") == "coep"
                and e.get("blocked_url") == image]

    reports = wait_for(coep_reports, REPORT_WAIT_S / 2)
    if not reports:
        context.close()  # flushes the reports still queued for the page
        reports = wait_for(coep_reports, REPORT_WAIT_S / 2)
    else:
        context.close()
    assert reports, f"no coep report reached the collector; events: {proxy.events[-10:]}"
    report = reports[0]
    assert report["url"] == page_url
    assert report["disposition"] == "reporting"
    assert report["body"]["blockedURL"] == image
    assert "Chrome" in report["user_agent"]
    # the collector's traffic is not a request event, and never reached the upstream page server
    assert not proxy.requests(path="/.coxp/reports")

    assert proxy.stop() == 0
    log = tmp_path / "coxp.log"
    log.write_text("\n".join(proxy.raw_lines) + "\n")
    summary = run_cli("report", "--json", "-c", str(proxy.config_path), str(log))
    assert summary.returncode == 0, summary.stderr
    data = json.loads(summary.stdout)
    coep = next(r for r in data["reports"] if r["type"] == "coep" and r["blocked_url"] == image)
    assert coep["count"] >= 1 and coep["documents"] == [page_url]
    fix = next(s for s in data["suggestions"] if s["key"] == "routes[0].coep.policy")
    assert image in fix["why"] and "Cross-Origin-Resource-Policy: cross-origin" in fix["why"]
