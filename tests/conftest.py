"""Fixtures of the end-to-end tests (the classes behind them are in `harness`)."""
from __future__ import annotations

import pytest

from harness import Coxp, CoxpPool, Loop, RawUpstream, Upstream, answer_as_query_asks, config_text, fresh_log, start_coxp


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


@pytest.fixture(scope="session")
def query_upstream(loop):
    """The recording upstream that answers as each request's query asks (`answer_as_query_asks`),
    shared by the whole session: tests find their requests with `saw(unique())`."""
    server = Upstream(loop, handler=answer_as_query_asks)
    yield server
    server.close()


@pytest.fixture
def coxp(tmp_path):
    """Factory: `coxp(text, *args)` writes `text` to `coxp.toml` (see `config_text`), runs
    `coxp run -c coxp.toml ARGS`, waits for `ready` (None: for nothing); SIGTERMs it after."""
    started: list[Coxp] = []

    def start(text: str, *args: str, name: str = "coxp.toml", ready: str | None = "listening") -> Coxp:
        started.append(start_coxp(tmp_path, text, *args, name=name, ready=ready))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def shared_proxy(tmp_path_factory, shared_upstream):
    process = start_coxp(tmp_path_factory.mktemp("shared-coxp"), config_text(shared_upstream.url))
    yield process
    process.stop()


@pytest.fixture
def proxy(shared_proxy, upstream):
    """coxp with the default settings in front of `upstream`."""
    yield from fresh_log(shared_proxy, upstream)


@pytest.fixture(scope="session")
def coxp_pool(query_upstream, tmp_path_factory):
    """One running coxp per distinct config text, in front of `query_upstream`, for the session."""
    pool = CoxpPool(tmp_path_factory.mktemp("coxp-pool"), query_upstream)
    yield pool
    pool.close()


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
