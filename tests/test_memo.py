"""The bounded LRU cache behind the decision and answer caches."""
from __future__ import annotations

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
