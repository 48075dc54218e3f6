"""A bounded least-recently-used cache for the request path's pure results.

Most requests repeat a handful of shapes (the same page origin, the same preflight), so a pure
function of the request's facts can answer from memory. Keys come from the client, so the
cache is bounded twice: by entries, and by refusing keys whose client-controlled strings are
long (a long key costs more to hash than recomputing the result saves, and would pin memory).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

# Longest client-controlled text (Origin + request headers + Host) a key may carry.
MAX_KEY_CHARS = 1024


class LruCache(Generic[V]):
    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._size = size

    def get(self, key: Hashable) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        entries = self._entries
        entries[key] = value
        if len(entries) > self._size:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
