"""`coxp run --watch`: reload when the content of the config file changes.

The directory holding the file is watched, not the file: editors save by writing a new file and
renaming it over the old one, and Kubernetes updates a ConfigMap volume by writing a new
timestamped directory and renaming a `..data` symlink over the old one (the config file is a
symlink through `..data`). Either way the inode that was watched is replaced, and a watch on
the file alone would go quiet after the first change. The file is watched too: a file
bind-mounted into a container and edited in place from outside changes without any event in
the container's directory (inotify reports a change to a directory's watch only when it is made
through that directory). Any event re-reads the file (through its symlinks) and reloads when its
bytes differ from the last seen: no reload for an unrelated file, a `touch`, or the removal of
an old ConfigMap generation.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable

from watchfiles import awatch

# Changes closer together than this are one change: a file written in pieces is read once.
SETTLE_MS = 100


def file_sha256(path: str) -> str | None:
    """SHA-256 of the file's bytes; None while it does not exist (between a delete and a create)."""
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # unreadable: reloading reports why


class ConfigWatch:
    def __init__(self, path: str, serving_sha256: str, reload: Callable[[], object]) -> None:
        self.path = path
        self.last_seen = serving_sha256
        self.reload = reload

    def check(self) -> None:
        """Reload (what SIGHUP does) when the file has content not seen before."""
        current = file_sha256(self.path)
        if current is None or current == self.last_seen:
            return
        self.last_seen = current
        self.reload()

    async def follow(self, stop: asyncio.Event) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        async for _changes in awatch(directory, self.path, watch_filter=None, recursive=False, step=SETTLE_MS,
                                     stop_event=stop):
            self.check()


async def start_watch(path: str, serving_sha256: str, reload: Callable[[], object], stop: asyncio.Event) -> asyncio.Task:
    """Watch the config file at `path` until `stop` is set; returns once changes are being recorded."""
    watch = ConfigWatch(path, serving_sha256, reload)
    task = asyncio.get_running_loop().create_task(watch.follow(stop))
    # The task's first step registers the watch (awatch creates its notifier before its first
    # await); a change from here on is seen. One made since the config was loaded is caught now.
    await asyncio.sleep(0)
    watch.check()
    return task
