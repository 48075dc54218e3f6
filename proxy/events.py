"""Every event coxp logs, and the per-request record its `request` event is written from.

The names of the events and of their fields are written here and nowhere else, as Envoy keeps
its stats in one place: a field added to the `request` line, or a new event, is one edit in
this file. Callers pass values; what an event counts in the metrics is counted here too (when
there are metrics: only a config with `[admin]` has them, `proxy.process.serve`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.console import request_extras
from proxy.http1 import RequestHead
from proxy.logs import Logger
from proxy.model import Header
from proxy.policy import Decision, EditResult, RequestInfo, preflight_header_names

if TYPE_CHECKING:
    from proxy.metrics import Metrics

# Logged for a request whose client went away before its response was complete (nginx's code).
CLIENT_CLOSED_REQUEST = 499

_NO_EXTRAS: dict[str, object] = {}


@dataclass(slots=True)
class RequestRecord:
    """One request, from its head to the end of its response: what its `request` event says.

    `status` stays 499 until the response was handed over whole, so a client that leaves
    earlier is logged as gone, with the upstream's status and the edits made to its head when
    the upstream had answered."""

    head: RequestHead
    info: RequestInfo
    decision: Decision
    shadow: Decision | None  # the route's candidate (shadow) CORS table's decision, if it has one
    started: float = field(default_factory=time.perf_counter)
    status: int = CLIENT_CLOSED_REQUEST
    upstream_status: int | None = None
    headers_set: list[str] = field(default_factory=list)
    headers_removed: list[str] = field(default_factory=list)
    response_headers: Sequence[Header] = ()  # the upstream's head as edited (the console log's cookie check)

    def answered(self, status: int, headers_set: list[str], headers_removed: list[str]) -> None:
        """coxp answered itself (`status`), with the route's policy edits."""
        self.status = status
        self.headers_set, self.headers_removed = headers_set, headers_removed

    def upstream_answered(self, status: int, edited: EditResult) -> None:
        """The upstream answered `status`; its head was edited as `edited` (not yet all sent)."""
        self.upstream_status = status
        self.headers_set, self.headers_removed = edited.set_names, edited.removed_names
        self.response_headers = edited.headers


def request(log: Logger, metrics: Metrics | None, record: RequestRecord, console: bool = False) -> None:
    """The decision log's line for one request (exactly one per request). `console`: the
    `[log] format = "console"` line also gets `host` and `warnings`."""
    duration_ms = round((time.perf_counter() - record.started) * 1000, 3)
    head, decision, shadow, info = record.head, record.decision, record.shadow, record.info
    # Only routes with a candidate table carry its decision.
    candidate = {}
    if shadow is not None:
        candidate = {"shadow_cors": shadow.cors, "shadow_reason": shadow.reason}
    if metrics is not None:
        metrics.observe(decision.route, decision.cors, record.status, duration_ms,
                        shadow.cors if shadow is not None else None)
    extras = request_extras(head.host, head.headers, record.response_headers, decision.origin, decision.cors,
                            record.headers_set, decision.route) if console else _NO_EXTRAS
    log.info(
        "request",
        route=decision.route,
        method=head.method,
        path=head.path,
        origin=decision.origin,
        cors=decision.cors,
        reason=decision.reason,
        headers_set=record.headers_set,
        headers_removed=record.headers_removed,
        status=record.status,
        upstream_status=record.upstream_status,
        duration_ms=duration_ms,
        preflight_method=info.request_method if info.looks_like_preflight else None,
        preflight_headers=preflight_header_names(info),
        credentials=info.credentials,
        **candidate,
        **extras,
    )


def bad_request(log: Logger, metrics: Metrics | None, status: int, reason: str, peer: str) -> None:
    """A request refused before routing (400, 405, 414, 431, 501, 505)."""
    if metrics is not None:
        metrics.bad_requests.labels(reason).inc()
    log.info("bad_request", status=status, reason=reason, peer=peer)


def report(log: Logger, metrics: Metrics | None, fields: dict[str, Any], labels: tuple[str, ...]) -> None:
    """One browser report received by the `[reports]` collector."""
    if metrics is not None:
        metrics.reports.labels(*labels).inc()
    log.info("report", **fields)


def report_rejected(log: Logger, status: int, reason: str, method: str, peer: str) -> None:
    log.info("report_rejected", status=status, reason=reason, method=method, peer=peer)


def upstream_error(log: Logger, metrics: Metrics | None, route: str, upstream: str, reason: str, detail: str, method: str,
                   path: str) -> None:
    """The upstream gave no usable response, or its response broke off."""
    if metrics is not None:
        metrics.upstream_errors.labels(route, reason).inc()
    log.warning("upstream_error", upstream=upstream, reason=reason, detail=detail, method=method, path=path)


def listening(log: Logger, listen: str, pid: int, tls: bool, admin: str | None, watch: bool) -> None:
    log.info("listening", listen=listen, pid=pid, tls=tls, admin=admin, watch=watch)


def config_reloaded(log: Logger, metrics: Metrics | None, routes: list[str], source: str, sha256: str,
                    restart_needed: list[str]) -> None:
    """The new config serves; `restart_needed`: settings it changed that are read at start only
    (`listen`, `workers`, TLS, `[admin]`), kept as they were: a warning, not to go unnoticed."""
    if metrics is not None:
        metrics.config.reloaded(sha256)
    (log.warning if restart_needed else log.info)("config_reloaded", routes=routes, source=source, sha256=sha256,
                                                  restart_needed=restart_needed)


def config_error(log: Logger, metrics: Metrics | None, errors: list[str]) -> None:
    """A reload found the config invalid; the old one keeps serving."""
    if metrics is not None:
        metrics.config.reload_failed()
    log.error("config_error", errors=errors)


def config_watch_failed(log: Logger, error: str) -> None:
    """Serving goes on; only changes to the file are no longer followed (SIGHUP still works)."""
    log.error("config_watch_failed", error=error)


def config_reload_skipped(log: Logger, reason: str) -> None:
    log.warning("config_reload_skipped", reason=reason)


def worker_died(log: Logger, pid: int, worker: int, exit_status: int) -> None:
    log.error("worker_died", pid=pid, worker=worker, exit_status=exit_status)
