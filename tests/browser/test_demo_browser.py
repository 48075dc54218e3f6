"""`coxp demo` in Chromium: every panel of the teaching page shows the outcome it promises, the
page's "Try it" commands run as printed, and a screenshot is kept for people to look at
(tests/artifacts/demo.png, a CI artifact)."""

from __future__ import annotations

import re
import subprocess

import pytest

from harness import REPO, Coxp

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ARTIFACTS = REPO / "tests" / "artifacts"
PANELS = ["cors-allowed", "cors-denied", "credentials", "preflight", "expose", "isolation", "corp", "coep",
          "report-only"]


@pytest.fixture
def demo(tmp_path):
    process = Coxp(["-m", "proxy", "demo", "--port", "0"], cwd=tmp_path).start(ready=None)
    try:
        process.wait_line(lambda line: "listening" in line, timeout=20)
        yield process
    finally:
        assert process.stop() == 0


def test_every_panel_shows_its_expected_outcome(demo, context):
    page_url = re.search(r"open\s+(http://localhost:\d+/)", "\n".join(demo.lines)).group(1)
    page = context.new_page()
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(page_url)
    page.wait_for_function("document.body.dataset.ran === 'all'", timeout=40_000)
    # The isolation panel opens a window, which needs a click (a user activation).
    with context.expect_page() as popup:
        page.click("#isolation button.run")
    isolated = popup.value
    isolated.wait_for_load_state()
    assert isolated.evaluate("self.crossOriginIsolated") is True
    page.wait_for_function("document.getElementById('isolation').dataset.verdict", timeout=20_000)

    ARTIFACTS.mkdir(exist_ok=True)
    # The whole page in one viewport (a full-page capture leaves cross-origin frames blank).
    page.set_viewport_size({"width": 1400, "height": page.evaluate("document.documentElement.scrollHeight")})
    page.screenshot(path=str(ARTIFACTS / "demo.png"))
    outcomes = {panel: page.eval_on_selector(f"#{panel}", "p => [p.dataset.did, p.dataset.expect, p.dataset.verdict]")
                for panel in PANELS}
    assert {panel: did for panel, (did, _, _) in outcomes.items()} == {
        panel: expect for panel, (_, expect, _) in outcomes.items()}
    assert all(verdict == "expected" for _, _, verdict in outcomes.values()), outcomes
    assert page.eval_on_selector_all(".panel", "ps => ps.length") == len(PANELS)

    # Each panel names coxp's decision for its own requests, read from the decision log.
    decided = page.inner_text("#cors-denied .decision")
    assert "route partner" in decided and "cors denied" in decided
    assert "OPTIONS /api/echo → 204" in page.inner_text("#preflight .decision")
    assert "cross-origin-resource-policy" in page.inner_text("#corp .headers")
    # The credentialed call the api route refuses comes with coxp's console warning saying why.
    assert "does not allow credentials" in page.inner_text("#credentials .decision")

    # The "Try it" commands work as printed: a real shell runs them.
    commands = page.text_content("#preflight .try").splitlines()  # inside a closed <details>
    assert len(commands) == 2
    preflight = subprocess.run(commands[0], shell=True, capture_output=True, text=True, timeout=30, check=False)
    assert preflight.returncode == 0, preflight.stderr
    assert "route:          api" in preflight.stdout and "access-control-allow-methods" in preflight.stdout.lower()
    assert page_url.rstrip("/") in preflight.stdout  # the page's real origin
