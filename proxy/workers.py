"""`workers = N`: N forked processes accepting on one port (SO_REUSEPORT), watched by the parent.

The parent serves nothing. It reserves the port (so `listen = "host:0"` gives every worker the same
one) and binds the admin listener's, relays SIGHUP/SIGTERM/SIGINT to the workers, and starts a new
worker when one dies. Worker 0 serves the admin listener and, with `--watch`, watches the config
file; a reload it starts (watch, `POST /reload`) reaches the others through the parent (SIGUSR1).
Each worker runs the `serve_worker` it is given (`proxy.process` passes its own), so this module
knows nothing of serving, and nothing it imports imports it back.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from proxy import events, logs
from proxy.config import load_config
from proxy.errors import ConfigError, ListenError
from proxy.model import Config, Endpoint, start_only_kept

if TYPE_CHECKING:
    from proxy.metrics import SharedValues


class Worker(NamedTuple):
    """What one worker serves with."""

    sock: socket.socket  # listening, SO_REUSEPORT on the shared port
    primary: bool  # worker 0: runs the admin listener and the config watch
    admin_sock: socket.socket | None  # the admin listener's socket (primary only)
    reload_peers: Callable[[], None] | None  # asks the parent to reload the others (primary only)


ServeWorker = Callable[[Config, Worker], int]  # returns the worker's exit status

RESPAWN_BACKOFF = 1.0  # seconds between restarts of a worker that keeps dying


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuseport_socket(listen: Endpoint, port: int) -> socket.socket:
    sock = socket.socket(_family(listen.host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, port))
    return sock


def reserve_port(listen: Endpoint) -> socket.socket:
    """A socket bound (never listening) to `listen`, which the workers' SO_REUSEPORT sockets can join.

    It is bound *before* SO_REUSEPORT is set: Linux lets a socket share a port only when both
    it and every socket already there have the option, so this bind fails with EADDRINUSE when
    anything holds the port, another coxp's workers included, instead of silently splitting
    the traffic between two processes (and two configs). Set afterwards, the option lets the
    workers' sockets join this one.
    """
    sock = socket.socket(_family(listen.host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as error:
        sock.close()
        raise ListenError(error, listen) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def admin_socket(listen: Endpoint) -> socket.socket:
    """The admin listener's socket, bound here so that a port in use fails before any fork and a
    replaced worker 0 serves on the same socket."""
    try:
        return socket.create_server((listen.host, listen.port), family=_family(listen.host))
    except OSError as error:
        raise ListenError(error, listen, "serve admin") from None


def _worker(config: Config, serve_worker: ServeWorker, port: int, index: int, admin: socket.socket | None) -> int:
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    sock = reuseport_socket(config.proxy.listen, port)
    sock.listen(2048)
    parent = os.getppid()
    if index != 0:
        if admin is not None:
            admin.close()
        return serve_worker(config, Worker(sock, False, None, None))
    # Worker 0 runs the admin listener (its port cannot be shared) and the config watch.
    return serve_worker(config, Worker(sock, True, admin, lambda: os.kill(parent, signal.SIGUSR1)))


def run_workers(config: Config, config_path: str | None, overrides: dict | None, serve_worker: ServeWorker) -> int:
    log = logs.get_logger()
    reserved = reserve_port(config.proxy.listen)  # bound, never listening: holds the port
    admin = admin_socket(config.admin.listen) if config.admin is not None else None
    port = reserved.getsockname()[1]
    shared_metrics: SharedValues | None = None
    if admin is not None:  # without an admin listener nothing counts metrics (proxy.process.serve)
        from proxy.metrics import share_between_processes

        shared_metrics = share_between_processes()
    workers: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(config, serve_worker, port, index, admin)
            finally:
                os._exit(code)
        workers[pid] = index

    started = config

    def reload_config() -> None:
        nonlocal config
        if config_path is not None:
            try:
                config = start_only_kept(load_config(config_path, overrides), started)  # what a restarted worker will use
            except ConfigError:
                pass  # each worker logs the error itself and keeps its config

    def relay(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum == signal.SIGHUP:
            reload_config()
        else:
            stopping = True
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    def reload_others(_signum: int, _frame: object) -> None:
        """Worker 0 has reloaded (watch, POST /reload): the parent and the other workers follow."""
        reload_config()
        for pid, index in list(workers.items()):
            if index != 0:
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, relay)
    signal.signal(signal.SIGUSR1, reload_others)
    for first in range(config.proxy.workers):
        spawn(first)

    while workers:
        pid, status = os.wait()
        index = workers.pop(pid, None)
        if shared_metrics is not None:
            shared_metrics.worker_exited(pid)
        if index is None or stopping:
            continue
        events.worker_died(log, pid, index, os.waitstatus_to_exitcode(status))
        time.sleep(RESPAWN_BACKOFF)
        if not stopping:
            spawn(index)
    reserved.close()
    if shared_metrics is not None:
        shared_metrics.remove()
    return 0
