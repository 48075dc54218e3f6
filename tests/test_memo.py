"""The bounded LRU cache behind the decision and answer caches."""
from __future__ import annotations

from harness import Reader, config_text, request_bytes, start_coxp
from proxy.memo import LruCache


def test_the_least_recently_used_entry_goes_first_and_a_hit_counts_as_use():
    cache: LruCache[str] = LruCache(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # now "b" is the least recently used
    cache.put("c", "C")
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == ("A", None, "C", 2)


def test_a_stream_of_new_keys_never_grows_it_past_its_size():
    cache: LruCache[int] = LruCache(16)
    for i in range(10_000):
        cache.put(f"https://{i}.example.test", i)
    assert len(cache) == 16 and cache.get("https://9999.example.test") == 9999


# --- through real sockets: the request path's caches stay bounded --------------------------------

ALLOW_PREVIEWS = ('[[routes]]\nname = "api"\npaths = ["/*"]\n[routes.cors]\n'
                  'allow_origins = ["https://*.preview.test"]\nallow_methods = ["PUT"]\n')


def preflights(proxy, start: int, count: int, batch: int = 500) -> None:
    """`count` preflights, every one with its own path and origin (a new head, decision and
    answer for each cache), pipelined `batch` at a time on one connection."""
    with proxy.connect() as sock:
        reader = Reader(sock)
        for first in range(start, start + count, batch):
            numbers = range(first, min(first + batch, start + count))
            sock.sendall(b"".join(request_bytes("OPTIONS", f"/p{n}", [
                ("Origin", f"https://b{n}.preview.test"), ("Access-Control-Request-Method", "PUT")], host="proxy.test")
                for n in numbers))
            for n in numbers:
                response = reader.response("OPTIONS")
                assert (response.status, response.value("access-control-allow-origin")) == (
                    204, f"https://b{n}.preview.test")


def test_twenty_thousand_more_distinct_heads_leave_the_memory_where_it_was(tmp_path):
    """Remembered heads, preparations, decisions and answers are bounded LRUs: 20,000 more
    distinct requests after the first 3,000 (which fill every cache) add a few hundred KiB,
    where remembering them all would take about 70 MiB (measured with the bounds removed)."""
    proxy = start_coxp(tmp_path, config_text(proxy={"upstream": "http://127.0.0.1:9"}, extra=ALLOW_PREVIEWS))
    try:
        preflights(proxy, 0, 3_000)
        filled = proxy.rss_kib()
        preflights(proxy, 3_000, 20_000)
        grown = proxy.rss_kib() - filled
        assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
    finally:
        proxy.stop()
