"""`workers = N`: N forked processes accepting on one port (SO_REUSEPORT), watched by the parent.

The parent serves nothing. It reserves the port (so `listen = "host:0"` gives every worker the same
one), relays SIGHUP/SIGTERM/SIGINT to the workers, and starts a new worker when one dies.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

from proxy import logs
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.model import Config, Endpoint
from proxy.server import serve

RESPAWN_BACKOFF = 1.0  # seconds between restarts of a worker that keeps dying


def reuseport_socket(listen: Endpoint, port: int | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, listen.port if port is None else port))
    return sock


def _worker(config: Config, config_path: str | None, overrides: dict | None, port: int, index: int) -> int:
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    sock = reuseport_socket(config.proxy.listen, port)
    sock.listen(2048)
    # Only the first worker runs the admin listener: its port cannot be shared.
    return asyncio.run(serve(config, config_path, overrides, sock=sock, admin=index == 0))


def run_workers(config: Config, config_path: str | None, overrides: dict | None) -> int:
    log = logs.get_logger()
    reserved = reuseport_socket(config.proxy.listen)  # bound, never listening: holds the port
    port = reserved.getsockname()[1]
    workers: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(config, config_path, overrides, port, index)
            finally:
                os._exit(code)
        workers[pid] = index

    def relay(signum: int, _frame: object) -> None:
        nonlocal stopping, config
        if signum == signal.SIGHUP and config_path is not None:
            try:
                config = load_config(config_path, overrides)  # what a restarted worker will use
            except ConfigError:
                pass  # each worker logs the error itself and keeps its config
        else:
            stopping = True
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, relay)
    for index in range(config.proxy.workers):
        spawn(index)

    while workers:
        pid, status = os.wait()
        index = workers.pop(pid, None)
        if index is None or stopping:
            continue
        log.error("worker_died", pid=pid, worker=index, exit_status=os.waitstatus_to_exitcode(status))
        time.sleep(RESPAWN_BACKOFF)
        if not stopping:
            spawn(index)
    reserved.close()
    return 0
