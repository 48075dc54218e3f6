"""Fixtures of the interop tests: each real server is started once (on first use) with a coxp in
front of it, and both are stopped when the module's tests are done."""
from __future__ import annotations

import pytest

from backends import BACKENDS, Backend
from harness import Coxp, config_text, start_coxp

# A policy header coxp sets on every response, to tell policy headers from the rest.
POLICY = '[defaults.corp]\npolicy = "same-site"\n'


class Pair:
    """A backend and the coxp in front of it."""

    def __init__(self, backend: Backend, proxy: Coxp) -> None:
        self.backend, self.proxy = backend, proxy


@pytest.fixture(scope="module")
def interop_pairs(tmp_path_factory):
    started: dict[str, Pair] = {}

    def get(name: str) -> Pair:
        if name not in started:
            backend = BACKENDS[name]().start()
            proxy = start_coxp(tmp_path_factory.mktemp(f"coxp-{name}"), config_text(backend.url, extra=POLICY))
            started[name] = Pair(backend, proxy)
        return started[name]

    yield get
    for pair in started.values():
        pair.proxy.stop()
        pair.backend.stop()


@pytest.fixture(params=list(BACKENDS))
def pair(request, interop_pairs) -> Pair:
    """Each real backend in turn, with its coxp."""
    return interop_pairs(request.param)
