"""The serving side of one process: listeners, the serving state, reload, drain.

`ProxyServer` is what every client connection reports to (it implements
`proxy.connection.ConnectionHandler`). The whole serving state (config, router, upstream
client) is swapped in one assignment on reload; a request in flight keeps the state it started
with. Signals, workers and the process's run loop are `proxy.process`'s.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy import events, logs
from proxy.config import load_config
from proxy.connection import ClientConnection
from proxy.errors import ConfigError
from proxy.exchange import exchange
from proxy.http1 import BadRequest, RequestHead, refusal, serialize_head
from proxy.listeners import bind_listeners
from proxy.model import Config, Endpoint, Limits, restart_needed
from proxy.routing import Router
from proxy.state import ServingState
from proxy.upstream import UpstreamClient

if TYPE_CHECKING:
    from proxy.metrics import Metrics

DRAIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The result of a reload: what `POST /reload` answers."""

    ok: bool
    sha256: str | None = None  # of the file now serving
    errors: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()  # start-only settings the file changed (not applied)


class ProxyServer:
    def __init__(self, config: Config, config_path: str | None, overrides: dict | None, metrics: Metrics | None):
        self.config_path = config_path
        self.overrides = overrides
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self.in_flight = 0
        self.metrics = metrics
        # With workers: tells the other workers to reload (set in the worker that has the admin listener).
        self.reload_peers: Callable[[], None] | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = config  # its start-only settings serve until the process ends
        self.state = self._build_state(config)

    def _build_state(self, config: Config, client: UpstreamClient | None = None) -> ServingState:
        if client is None or client.settings != config.proxy:
            client = UpstreamClient.for_settings(config.proxy)
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

    # --- requests (proxy.connection.ConnectionHandler) ----------------------------------------
    def _admit(self) -> bool:
        return self.in_flight <= self.state.config.limits.max_in_flight

    def limits(self) -> Limits:
        return self.state.config.limits

    def opened(self, conn: ClientConnection) -> bool:
        if len(self.connections) >= self.state.config.limits.max_connections:
            return False
        self.connections.add(conn)
        return True

    def closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    async def handle(self, conn: ClientConnection, head: RequestHead) -> bool:
        metrics = self.metrics
        self.in_flight += 1
        if metrics is not None:
            metrics.in_flight.inc()
        self._idle.clear()
        try:
            return await exchange(self.state, conn, head)
        finally:
            self.in_flight -= 1
            if metrics is not None:
                metrics.in_flight.dec()
            if self.in_flight == 0:
                self._idle.set()

    def refuse(self, conn: ClientConnection, refused: BadRequest) -> None:
        """Requests rejected before routing: a short answer, the connection closed, a log line."""
        headers, body = refusal(refused)
        conn.write(serialize_head(refused.status, headers) + body)
        events.bad_request(self.state.log, self.metrics, refused.status, refused.reason, conn.peer_ip)

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """The proxy listener is bound (with a loaded config: there is no other way to start) and not draining."""
        return bool(self._servers) and not self.stopping

    async def start(self, sock: socket.socket | None = None) -> str:
        """Start listening; returns the address actually bound (port 0 picks a free one)."""
        proxy = self.state.config.proxy
        tls = server_tls_context(proxy.tls_cert, proxy.tls_key) if proxy.tls_cert and proxy.tls_key else None
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
            events.config_reload_skipped(log, "no config file to reload")
            return Reloaded(False, errors=("no config file to reload: the config came from the command line",))
        try:
            config = load_config(self.config_path, self.overrides)
        except Exception as error:  # noqa: BLE001 - a reload must never take the server down
            errors = tuple(error.lines()) if isinstance(error, ConfigError) else (f"{self.config_path}: {error}",)
            events.config_error(log, self.metrics, list(errors))
            return Reloaded(False, errors=errors)
        old = self.state
        if config.log != old.config.log:
            logs.configure(config.log.format, config.log.level)
        self.state = self._build_state(config, old.client)
        if self.state.client is not old.client:
            asyncio.get_running_loop().create_task(_close_later(old.client))
        restart = restart_needed(self.started, config)
        events.config_reloaded(self.state.log, self.metrics, [r.name for r in config.routes], config.source,
                               config.sha256, restart)
        return Reloaded(True, config.sha256, restart_needed=tuple(restart))

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
        except TimeoutError:
            pass
        for conn in list(self.connections):
            conn.close()
        self.state.client.close()


async def _close_later(client: UpstreamClient) -> None:
    # Requests that started before the reload still use the old pool; give them time to finish.
    await asyncio.sleep(DRAIN_SECONDS * 6)
    client.close()


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context
