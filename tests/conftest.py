"""Fixtures of the end-to-end tests (the classes behind them are in `harness`)."""
from __future__ import annotations

import pytest

from harness import Coxp, Loop, RawUpstream, Upstream, config_text, fresh_log, start_coxp


@pytest.fixture(scope="session")
def loop():
    background = Loop()
    yield background
    background.close()


@pytest.fixture(scope="session")
def shared_upstream(loop):
    server = Upstream(loop)
    yield server
    server.close()


@pytest.fixture
def upstream(shared_upstream):
    """The recording upstream, reset for this test (it is shared: starting one per test is slow)."""
    shared_upstream.reset()
    return shared_upstream


def _coxp_factory(directory):
    started: list[Coxp] = []

    def start(text: str, name: str = "coxp.toml") -> Coxp:
        started.append(start_coxp(directory, text, name))
        return started[-1]

    return start, started


@pytest.fixture
def coxp(tmp_path):
    """Factory: `coxp(text)` starts coxp with that config (see `config_text`), SIGTERMs it after."""
    start, started = _coxp_factory(tmp_path)
    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def shared_proxy(tmp_path_factory, shared_upstream):
    start, started = _coxp_factory(tmp_path_factory.mktemp("shared-coxp"))
    yield start(config_text(shared_upstream.url))
    for process in started:
        process.stop()


@pytest.fixture
def proxy(shared_proxy, upstream):
    """coxp with the default settings in front of `upstream`."""
    yield from fresh_log(shared_proxy, upstream)



@pytest.fixture
def raw_upstream(loop):
    """Factory: `raw_upstream(serve)` starts a `RawUpstream` answering with `serve`."""
    started: list[RawUpstream] = []

    def start(serve) -> RawUpstream:
        server = RawUpstream(loop, serve)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
