"""The soak and leak check (`bench/soak.py`, `make soak` runs 100,000 requests) in a short run:
10,000 mixed requests (successes, preflights, client aborts mid-body and mid-response, upstream
resets, timeouts, WebSocket tunnels), then descriptors, upstream connections and RSS are back."""
from __future__ import annotations

import subprocess

from harness import PYTHON, REPO


def test_ten_thousand_mixed_requests_leave_nothing_behind():
    run = subprocess.run([PYTHON, str(REPO / "bench" / "soak.py"), "--requests", "10000", "--deadline", "150"],
                         cwd=REPO, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "soak: PASS" in run.stdout
