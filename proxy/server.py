"""Server lifecycle: listeners, the serving state, reload on SIGHUP, drain on SIGTERM, workers.

The whole serving state (config, router, upstream client) is swapped in one assignment on
reload; a request in flight keeps the state it started with.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from proxy import logs
from proxy.config import load_config
from proxy.console import request_extras
from proxy.connection import ClientConnection
from proxy.errors import ConfigError
from proxy.exchange import Outcome, exchange
from proxy.forwarding import UpstreamClient
from proxy.http1 import BadRequest, RequestHead, refusal, serialize_head
from proxy.listeners import bind_listeners
from proxy.metrics import Metrics
from proxy.model import Config, Endpoint
from proxy.policy import Decision, RequestInfo, preflight_header_names
from proxy.routing import Router

DRAIN_SECONDS = 10.0
_NO_EXTRAS: dict[str, object] = {}


@dataclass(slots=True)
class ServingState:
    config: Config
    router: Router
    client: UpstreamClient
    log: object
    metrics: Metrics
    stopping: Callable[[], bool]
    admit: Callable[[], bool]
    refuse: Callable[[ClientConnection, BadRequest], None]
    console: bool = False  # [log] format = "console": the request line also gets `host` and `warnings`

    def log_request(self, head: RequestHead, info: RequestInfo, decision: Decision, shadow: Decision | None,
                    outcome: Outcome, started: float) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        self.metrics.observe(decision.route, decision.cors, outcome.status, duration_ms)
        # Only routes with a candidate table carry its decision.
        candidate = {}
        if shadow is not None:
            candidate = {"shadow_cors": shadow.cors, "shadow_reason": shadow.reason}
            if shadow.cors != decision.cors:
                self.metrics.shadow_diffs.labels(decision.route, decision.cors, shadow.cors).inc()
        extras = request_extras(head.host, head.headers, outcome.response_headers, decision.origin, decision.cors,
                                outcome.headers_set, decision.route) if self.console else _NO_EXTRAS
        self.log.info(
            "request",
            route=decision.route,
            method=head.method,
            path=head.path,
            origin=decision.origin,
            cors=decision.cors,
            reason=decision.reason,
            headers_set=outcome.headers_set,
            headers_removed=outcome.headers_removed,
            status=outcome.status,
            upstream_status=outcome.upstream_status,
            duration_ms=duration_ms,
            preflight_method=info.request_method if info.looks_like_preflight else None,
            preflight_headers=preflight_header_names(info),
            credentials=info.credentials,
            **candidate,
            **extras,
        )


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The result of a reload: what `POST /reload` answers."""

    ok: bool
    sha256: str | None = None  # of the file now serving
    errors: tuple[str, ...] = ()


class ProxyServer:
    def __init__(self, config: Config, config_path: str | None, overrides: dict | None):
        self.config_path = config_path
        self.overrides = overrides
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self.in_flight = 0
        self.metrics = Metrics(config.sha256)
        # With workers: tells the other workers to reload (set in the worker that has the admin listener).
        self.reload_peers: Callable[[], None] | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.state = self._build_state(config)

    def _build_state(self, config: Config, client: UpstreamClient | None = None) -> ServingState:
        if client is None or client.settings != config.proxy:
            client = UpstreamClient(config.proxy)
        return ServingState(
            config=config,
            router=Router(config),
            client=client,
            log=logs.get_logger(),
            metrics=self.metrics,
            stopping=lambda: self.stopping,
            admit=self._admit,
            refuse=self.refuse,
            console=config.log.format == "console",
        )

    # --- requests ---------------------------------------------------------------------------
    def _admit(self) -> bool:
        return self.in_flight <= self.state.config.limits.max_in_flight

    async def handle(self, conn: ClientConnection, head: RequestHead) -> bool:
        self.in_flight += 1
        self.metrics.in_flight.inc()
        self._idle.clear()
        return await exchange(self.state, conn, head)

    def request_done(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()
        if self.in_flight == 0:
            self._idle.set()

    def refuse(self, conn: ClientConnection, refused: BadRequest) -> None:
        """Requests rejected before routing: a short answer, the connection closed, a log line."""
        headers, body = refusal(refused)
        conn.write(serialize_head(refused.status, headers) + body)
        self.metrics.bad_requests.labels(refused.reason).inc()
        self.state.log.info("bad_request", status=refused.status, reason=refused.reason, peer=conn.peer_ip)

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """The proxy listener is bound (with a loaded config: there is no other way to start) and not draining."""
        return bool(self._servers) and not self.stopping

    async def start(self, sock: socket.socket | None = None) -> str:
        """Start listening; returns the address actually bound (port 0 picks a free one)."""
        proxy = self.state.config.proxy
        tls = server_tls_context(proxy.tls_cert, proxy.tls_key) if proxy.tls_cert else None
        loop = asyncio.get_running_loop()
        factory = lambda: ClientConnection(self, tls is not None)  # noqa: E731
        for listener in [sock] if sock is not None else bind_listeners(proxy.listen):
            self._servers.append(await loop.create_server(factory, sock=listener, ssl=tls, backlog=2048))
        # A host name (`localhost`) is kept as written: it may stand for several addresses.
        return str(Endpoint(proxy.listen.host, self._servers[0].sockets[0].getsockname()[1]))

    def reload(self) -> Reloaded:
        """SIGHUP: load the file again; an invalid config is logged and the old one keeps serving."""
        log = self.state.log
        if self.config_path is None:  # `coxp dev`: the config comes from the command line
            log.warning("config_reload_skipped", reason="no config file to reload")
            return Reloaded(False, errors=("no config file to reload: the config came from the command line",))
        try:
            config = load_config(self.config_path, self.overrides)
        except Exception as error:  # noqa: BLE001 - a reload must never take the server down
            errors = tuple(error.lines()) if isinstance(error, ConfigError) else (f"{self.config_path}: {error}",)
            log.error("config_error", errors=list(errors))
            self.metrics.config.reload_failed()
            return Reloaded(False, errors=errors)
        old = self.state
        if config.log != old.config.log:
            logs.configure(config.log.format, config.log.level)
        self.state = self._build_state(config, old.client)
        if self.state.client is not old.client:
            asyncio.get_running_loop().create_task(_close_later(old.client))
        self.metrics.config.reloaded(config.sha256)
        self.state.log.info("config_reloaded", routes=[r.name for r in config.routes], source=config.source,
                            sha256=config.sha256)
        return Reloaded(True, config.sha256)

    def reload_everywhere(self) -> Reloaded:
        """`--watch` and `POST /reload`: reload here and, with workers, in every other worker too."""
        result = self.reload()
        if result.ok and self.reload_peers is not None:
            self.reload_peers()
        return result

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (up to DRAIN_SECONDS), close the rest."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        try:
            await asyncio.wait_for(self._idle.wait(), DRAIN_SECONDS)
        except asyncio.TimeoutError:
            pass
        for conn in list(self.connections):
            conn.close()
        await self.state.client.close()


async def _close_later(client: UpstreamClient) -> None:
    # Requests that started before the reload still use the old pool; give them time to finish.
    await asyncio.sleep(DRAIN_SECONDS * 6)
    await client.close()


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def install_event_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: Config, config_path: str | None, overrides: dict | None, sock: socket.socket | None = None,
                admin: bool = True, announce: Callable[[str], None] | None = None, admin_sock: socket.socket | None = None,
                watch: bool = False, reload_peers: Callable[[], None] | None = None) -> int:
    """Run one serving process until SIGTERM/SIGINT; returns the exit status.

    `announce` is called with the bound address before the first log line (`coxp dev`'s banner);
    `admin_sock`: the admin listener's socket, bound by the parent of the workers; `watch`:
    reload when the config file changes; `reload_peers`: how a reload reaches the other workers.
    """
    server = ProxyServer(config, config_path, overrides)
    server.reload_peers = reload_peers
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    address = await server.start(sock)
    if announce is not None:
        announce(address)
    admin_runner = None
    if admin and config.admin is not None:
        from proxy.admin import bound_address, start_admin

        admin_runner = await start_admin(server, config.admin.listen, admin_sock)
    watcher = None
    if watch and config_path is not None:
        from proxy.watch import start_watch

        watcher = await start_watch(config_path, config.sha256, server.reload_everywhere, stop)
        watcher.add_done_callback(lambda task: _watch_ended(task, server.state.log))
    server.state.log.info("listening", listen=address, pid=os.getpid(), tls=bool(config.proxy.tls_cert),
                          admin=bound_address(admin_runner) if admin_runner else None, watch=watcher is not None)
    await stop.wait()
    await server.shutdown()
    if watcher is not None:
        await asyncio.gather(watcher, return_exceptions=True)
    if admin_runner is not None:
        await admin_runner.cleanup()
    return 0


def _watch_ended(task: asyncio.Task, log) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Serving goes on; only changes to the file are no longer followed (SIGHUP still works).
        log.error("config_watch_failed", error=str(task.exception()))


def run(config: Config, config_path: str | None, overrides: dict | None,
        announce: Callable[[str], None] | None = None, watch: bool = False) -> int:
    logs.configure(config.log.format, config.log.level)
    install_event_loop()
    if config.proxy.workers > 1:
        from proxy.workers import run_workers

        return run_workers(config, config_path, overrides, watch)
    return asyncio.run(serve(config, config_path, overrides, announce=announce, watch=watch))
