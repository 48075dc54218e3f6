"""What serving a request needs, in one value that a reload swaps whole.

A request in flight keeps the state it started with. Built by `proxy.server`; read by
`proxy.exchange` and `proxy.collector`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.connection import ClientConnection
from proxy.http1 import BadRequest
from proxy.logs import Logger
from proxy.model import Config
from proxy.routing import Router
from proxy.upstream import UpstreamClient

if TYPE_CHECKING:
    from proxy.metrics import Metrics


@dataclass(slots=True)
class ServingState:
    config: Config
    router: Router
    client: UpstreamClient
    log: Logger
    metrics: Metrics | None  # None without an admin listener: nothing could read them
    stopping: Callable[[], bool]
    admit: Callable[[], bool]
    refuse: Callable[[ClientConnection, BadRequest], None]  # a refusal before routing (logged bad_request)
    console: bool = False  # [log] format = "console": the request line also gets `host` and `warnings`
