"""The decision log: structlog configured once, for speed (orjson, cached loggers, no frame lookups).

Every event is written to stdout as one whole line with a single `write(2)` where possible. With
`workers = N` several processes share that stdout, usually a pipe: POSIX makes a pipe write
atomic only up to `PIPE_BUF` (4096 bytes on Linux), and a longer line (a long path, a long
`errors` list) written while the pipe is full is split into pieces that other workers' lines
can land between. So once the process has forked, each longer line is written under a POSIX record
lock on a file shared by the parent and its workers (record locks belong to a process, so
inherited descriptors still exclude each other); before any fork there is one writer and no lock.
"""
from __future__ import annotations

import fcntl
import logging
import os
import select
import sys
import tempfile
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

LEVELS = {name: getattr(logging, name.upper()) for name in ("debug", "info", "warning", "error", "critical")}


def render_json(_logger: object, method_name: str, event: dict) -> bytes:
    """Level, timestamp and JSON in one processor: this runs for every request.

    orjson formats the datetime itself (ISO 8601, `Z` for UTC); default=str keeps a stray
    non-JSON value (an exception, a Path) from losing the whole line.
    """
    event["level"] = method_name
    event["timestamp"] = datetime.now(UTC)
    return orjson.dumps(event, default=str, option=orjson.OPT_UTC_Z)


def direct_json(base: type) -> type:
    """`base` (a filtering bound logger class) rendering straight to JSON: the same line as the
    `render_json` processor makes, in one step instead of structlog's processor chain (context
    copy, processor loop, result type checks, method lookup), which cost more than the
    rendering itself on the request path (bench/NOTES.md). Filtering, `bind` and the
    level methods are structlog's own."""

    class DirectJsonLogger(base):
        def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> None:
            if self._context:
                event_kw = {**self._context, **event_kw}
            if event is not None:
                event_kw["event"] = event
            event_kw["level"] = method_name
            event_kw["timestamp"] = datetime.now(UTC)
            self._logger.msg(orjson.dumps(event_kw, default=str, option=orjson.OPT_UTC_Z))

    return DirectJsonLogger


class LineWriter:
    """A structlog logger writing each rendered event (bytes or str) as one line to a file
    descriptor, whole even when several processes share it (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.shared = False  # set in parent and child by the fork hook
        self._lock_file = None
        try:
            self._lock_file = tempfile.TemporaryFile(prefix="coxp-log-lock-")
        except OSError:  # no writable temporary directory: lines over PIPE_BUF may interleave
            pass

    def msg(self, message: Any) -> None:
        line = (message.encode("utf-8", "replace") if isinstance(message, str) else message) + b"\n"
        # A write of at most PIPE_BUF bytes to a pipe is atomic (POSIX): no lock needed.
        if not self.shared or self._lock_file is None or len(line) <= select.PIPE_BUF:
            self._write_all(line)
            return
        fcntl.lockf(self._lock_file, fcntl.LOCK_EX)
        try:
            self._write_all(line)
        finally:
            fcntl.lockf(self._lock_file, fcntl.LOCK_UN)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # a non-blocking stdout inherited from the caller
                select.select([], [self.fd], [])
                continue
            except BrokenPipeError:  # nobody reads the log any more; serving goes on
                return
            view = view[written:]


class _StreamWriter:
    """The fallback when stdout has no file descriptor (an in-memory stream in a test)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def msg(self, message: Any) -> None:
        self.stream.write((message.decode("utf-8", "replace") if isinstance(message, bytes) else message) + "\n")
        self.stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


_writer: LineWriter | None = None


def _mark_shared() -> None:
    if _writer is not None:
        _writer.shared = True


os.register_at_fork(after_in_parent=_mark_shared, after_in_child=_mark_shared)


def configure(log_format: str, level: str) -> None:
    """Route every event to stdout, one whole line per event (JSON) or a readable console line."""
    global _writer
    if log_format == "json":
        processors: list[Any] = [render_json]
    else:
        from proxy.console import ConsoleRenderer, colours_wanted

        processors = [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            ConsoleRenderer(colours_wanted(sys.stdout)),
        ]
    sys.stdout.flush()  # anything printed before goes out before the first event
    try:
        _writer = LineWriter(sys.stdout.fileno())
        writer: Any = _writer
    except (AttributeError, OSError, ValueError):  # stdout replaced by an in-memory stream
        _writer = None
        writer = _StreamWriter(sys.stdout)
    wrapper_class = structlog.make_filtering_bound_logger(LEVELS[level.lower()])
    if log_format == "json":
        wrapper_class = direct_json(wrapper_class)
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    """A logger bound now (after `configure`): no lazy-proxy lookup on each event."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind()
    return logger
