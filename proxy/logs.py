"""The decision log: one line per event on stdout, JSON (the default) or the console format.

`Logger` is what every event goes through (`proxy.events`): a method per level, the event's
fields rendered to one line by the configured renderer, written whole. It is coxp's own, not
structlog's: a serving process with the JSON format never imports structlog, which with its
optional `rich` and `greenlet` costs ~7 MiB of memory per process (docs/DECISIONS.md); the
console format, a development tool, renders other events than `request` with structlog's
console renderer, imported only then.

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
import os
import select
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.console import ConsoleRenderer, colours_wanted

# The `[log] level` names, numbered as the standard library's `logging` numbers them.
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}

Event = dict[str, Any]
# One event (the name of its level, its fields) as one line, without the newline; it may add fields.
Renderer = Callable[[str, Event], bytes | str]
# Sees every event's fields before they are rendered (`coxp demo` keeps the decisions for its page).
Observer = Callable[[Event], object]


def render_json(level: str, event: Event) -> bytes:
    """The JSON line: the event's fields, `level` and `timestamp`, in one orjson call (this runs for
    every request).

    orjson formats the datetime itself (ISO 8601, `Z` for UTC); default=str keeps a stray
    non-JSON value (an exception, a Path) from losing the whole line.
    """
    event["level"] = level
    event["timestamp"] = datetime.now(UTC)
    return orjson.dumps(event, default=str, option=orjson.OPT_UTC_Z)


def console_renderer(stream: Any) -> Renderer:
    """The console line (`proxy.console`), with the level and an ISO 8601 UTC timestamp; coloured
    when `stream` is a terminal."""
    render = ConsoleRenderer(colours_wanted(stream))

    def render_console(level: str, event: Event) -> str:
        event["level"] = level
        event["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return render(None, level, event)

    return render_console


def observed(observe: Observer, render: Renderer) -> Renderer:
    def render_observed(level: str, event: Event) -> bytes | str:
        observe(event)
        return render(level, event)

    return render_observed


class Logger:
    """What every event is logged through (`proxy.events`): one method per level. An event at or
    above the configured level is rendered to one line and written whole; one below it costs a
    comparison."""

    __slots__ = ("_threshold", "_render", "_write")

    def __init__(self, threshold: int, render: Renderer, write: Callable[[bytes | str], None]) -> None:
        self._threshold = threshold
        self._render = render
        self._write = write

    def _log(self, level: str, event: str, fields: Event) -> None:
        fields["event"] = event
        self._write(self._render(level, fields))

    def debug(self, event: str, **fields: Any) -> None:
        if self._threshold <= DEBUG:
            self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._threshold <= INFO:
            self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._threshold <= WARNING:
            self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        if self._threshold <= ERROR:
            self._log("error", event, fields)


class LineWriter:
    """Writes each rendered event (bytes or str) as one line to a file descriptor, whole even
    when several processes share it (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.shared = False  # set in parent and child by the fork hook
        self._lock_file = None
        try:
            self._lock_file = tempfile.TemporaryFile(prefix="coxp-log-lock-")
        except OSError:  # no writable temporary directory: lines over PIPE_BUF may interleave
            pass

    def write_line(self, message: bytes | str) -> None:
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

    def write_line(self, message: bytes | str) -> None:
        self.stream.write((message.decode("utf-8", "replace") if isinstance(message, bytes) else message) + "\n")
        self.stream.flush()


_writer: LineWriter | None = None
_logger: Logger | None = None


def _mark_shared() -> None:
    if _writer is not None:
        _writer.shared = True


os.register_at_fork(after_in_parent=_mark_shared, after_in_child=_mark_shared)


def _stdout_writer() -> Callable[[bytes | str], None]:
    """Stdout's line writer. A reload that changes `[log]` keeps the one it has: with workers, its
    lock file is the one the other processes share."""
    global _writer
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout replaced by an in-memory stream
        return _StreamWriter(sys.stdout).write_line
    if _writer is None or _writer.fd != fd:
        _writer = LineWriter(fd)
    return _writer.write_line


def configure(log_format: str, level: str, observe: Observer | None = None) -> None:
    """Log every event to stdout, one whole line per event: JSON or a readable console line.
    `observe` sees every event first."""
    global _logger
    render = render_json if log_format == "json" else console_renderer(sys.stdout)
    if observe is not None:
        render = observed(observe, render)
    sys.stdout.flush()  # anything printed before goes out before the first event
    _logger = Logger(LEVELS[level.lower()], render, _stdout_writer())


def get_logger() -> Logger:
    """The logger of the last `configure` (a reload that changes `[log]` configures a new one)."""
    if _logger is None:
        raise RuntimeError("proxy.logs.configure() has not been called")
    return _logger
