"""Reading decision logs back: the JSON lines `coxp run` writes, for `coxp report` and `coxp learn`.

Logs are read as a stream, one line at a time, so a day of staging traffic is summarised in
constant memory. A line that is not a JSON object (a console-format line, a stack trace someone
pasted, a line cut short by a full disk) is counted and skipped, never fatal.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import IO, Any

import orjson

STDIN = "-"


class LogReadError(Exception):
    """A log file that cannot be opened; the message names it."""


class LogReader:
    """The events of the decision logs `paths` (`-` or none: standard input), in order."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths or [STDIN]
        self.lines = 0  # non-empty lines read
        self.skipped = 0  # of which were not JSON objects

    def events(self) -> Iterator[dict[str, Any]]:
        for path in self.paths:
            yield from self._events_of(path)

    def _events_of(self, path: str) -> Iterator[dict[str, Any]]:
        if path == STDIN:
            yield from self._parse(sys.stdin.buffer)
            return
        try:
            file = open(path, "rb")
        except OSError as error:
            raise LogReadError(f"{path}: {error.strerror or error}") from None
        with file:
            yield from self._parse(file)

    def _parse(self, stream: IO[bytes]) -> Iterator[dict[str, Any]]:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            self.lines += 1
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                self.skipped += 1
                continue
            yield event
