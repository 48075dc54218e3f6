"""One coxp process, from start to exit: the event loop, signals, admin listener, config watch.

`run` is what `coxp run`/`coxp dev` call. With `workers = 1` this process serves; with more,
`proxy.workers` forks them and each runs `serve` on the shared port.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from collections.abc import Callable

from proxy import events, logs
from proxy.logs import Logger
from proxy.model import Config
from proxy.server import ProxyServer
from proxy.workers import Worker, run_workers


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
    metrics = None
    if config.admin is not None:
        # Metrics are read only through the admin listener: without one, prometheus-client is
        # never imported and nothing is counted (docs/DECISIONS.md). `[admin]` is read at start
        # only, like `listen`, so a reload cannot add a reader.
        from proxy.metrics import Metrics

        metrics = Metrics(config.sha256)
    server = ProxyServer(config, config_path, overrides, metrics)
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
    if admin and config.admin is not None and metrics is not None:
        # Imported here: aiohttp's web server is loaded only by a process with an admin listener.
        from proxy.admin import bound_address, start_admin

        admin_runner = await start_admin(server, metrics, config.admin.listen, admin_sock)
    watcher = None
    if watch and config_path is not None:
        from proxy.watch import start_watch

        watcher = await start_watch(config_path, config.sha256, server.reload_everywhere, stop)
        watcher.add_done_callback(lambda task: _watch_ended(task, server.state.log))
    # Everything built so far (modules, config, server) lives as long as the process: moved out
    # of the cyclic collector's way, so its full passes no longer walk ~33k startup objects and
    # stall every connection for milliseconds (bench/NOTES.md).
    gc.freeze()
    events.listening(server.state.log, address, os.getpid(), bool(config.proxy.tls_cert),
                     bound_address(admin_runner) if admin_runner else None, watcher is not None)
    await stop.wait()
    await server.shutdown()
    if watcher is not None:
        await asyncio.gather(watcher, return_exceptions=True)
    if admin_runner is not None:
        await admin_runner.cleanup()
    return 0


def _watch_ended(task: asyncio.Task, log: Logger) -> None:
    if not task.cancelled() and task.exception() is not None:
        events.config_watch_failed(log, str(task.exception()))


def run(config: Config, config_path: str | None, overrides: dict | None,
        announce: Callable[[str], None] | None = None, watch: bool = False) -> int:
    logs.configure(config.log.format, config.log.level)
    install_event_loop()
    if config.proxy.workers > 1:

        def serve_worker(worker_config: Config, worker: Worker) -> int:
            return asyncio.run(serve(worker_config, config_path, overrides, sock=worker.sock, admin=worker.primary,
                                     admin_sock=worker.admin_sock, watch=watch and worker.primary,
                                     reload_peers=worker.reload_peers))

        return run_workers(config, config_path, overrides, serve_worker)
    return asyncio.run(serve(config, config_path, overrides, announce=announce, watch=watch))
