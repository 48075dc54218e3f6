"""The decision log: structlog configured once, for speed (orjson, cached loggers, no frame lookups)."""
from __future__ import annotations

import logging
import sys

import orjson
import structlog

LEVELS = {name: getattr(logging, name.upper()) for name in ("debug", "info", "warning", "error", "critical")}


def _orjson_dumps(event: dict, **_: object) -> bytes:
    # default=str keeps a stray non-JSON value (an exception, a Path) from losing the whole line.
    return orjson.dumps(event, default=str)


def configure(log_format: str, level: str) -> None:
    """Route every event to stdout, one whole line per event (JSON) or a readable console line."""
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        processors = [*shared, structlog.processors.JSONRenderer(serializer=_orjson_dumps)]
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level.lower()]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger()
