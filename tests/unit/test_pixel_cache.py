"""DecodedCache: one decode per image for all the agents of a worker that read it, bounded memory."""

import io

import pytest
from PIL import Image

from lensflow.streams.pixel import DecodedCache


class CountingStorage:
    def __init__(self, mode="RGB"):
        buf = io.BytesIO()
        Image.new(mode, (64, 48), 128 if mode == "L" else (10, 20, 30)).save(buf, "PNG")
        self.data = buf.getvalue()
        self.reads: list[str] = []

    def read(self, uri: str, max_bytes: int) -> bytes:
        self.reads.append(uri)
        if uri.startswith("missing"):
            raise FileNotFoundError(uri)
        return self.data


def cache_for(size=8):
    cache = DecodedCache(size)
    cache.register("objects", ["objects"])
    cache.register("visual", ["scene", "embedding"])
    cache.register("faces", ["faces"])
    return cache


def test_one_decode_serves_every_reader_then_the_entry_is_dropped():
    cache, storage = cache_for(), CountingStorage()
    readers = cache.readers_of(["objects", "scene", "faces", "metadata"])
    assert readers == {"objects", "visual", "faces"}
    images = [cache.get(storage, "a", 1 << 20, r, readers) for r in ("visual", "objects", "faces")]
    assert storage.reads == ["a"]
    assert images[0] is images[1] is images[2] and images[0].mode == "RGB"
    assert len(cache) == 0  # the last reader released it
    cache.get(storage, "a", 1 << 20, "visual", readers)  # a redelivery decodes again
    assert storage.reads == ["a", "a"]


def test_only_the_agents_an_image_expects_hold_it():
    cache, storage = cache_for(), CountingStorage()
    readers = cache.readers_of(["objects"])
    cache.get(storage, "a", 1 << 20, "objects", readers)
    assert len(cache) == 0  # nobody else will ask: not kept


def test_a_full_cache_holds_the_fast_agent_until_a_slow_one_catches_up():
    import threading
    import time

    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "ab":
        cache.get(storage, uri, 1 << 20, "objects", readers)
    done = threading.Event()
    fast = threading.Thread(target=lambda: (cache.get(storage, "c", 1 << 20, "objects", readers), done.set()))
    fast.start()
    time.sleep(0.2)
    assert not done.is_set() and len(cache) == 2  # waiting: "a" and "b" are still owed to faces
    cache.get(storage, "a", 1 << 20, "faces", readers)  # the slow agent catches up and releases "a"
    fast.join(5)
    assert done.is_set()
    cache.get(storage, "b", 1 << 20, "faces", readers)
    cache.get(storage, "c", 1 << 20, "faces", readers)
    assert storage.reads == ["a", "b", "c"] and len(cache) == 0  # each decoded once


def test_an_agent_that_never_comes_slows_the_others_but_never_stops_them():
    cache, storage = cache_for(size=2), CountingStorage()
    cache.wait_s = 0.05
    readers = cache.readers_of(["objects", "faces"])
    for uri in "abcd":
        cache.get(storage, uri, 1 << 20, "objects", readers)  # faces never reads
    assert len(cache) == 2
    cache.get(storage, "a", 1 << 20, "faces", readers)  # evicted long ago: decoded again
    assert storage.reads == ["a", "b", "c", "d", "a"]
    # objects had "a" before it was evicted: the copy decoded again for faces waits for no one
    assert "a" not in [uri for uri in cache._items]


def test_an_entry_decoded_again_after_eviction_waits_only_for_readers_that_never_had_it():
    """A slow agent far behind (a backlog after a restart) re-decodes evicted images: those copies must
    not wait for the fast agents that already read them, or they fill the cache and stall everyone."""
    cache, storage = cache_for(size=2), CountingStorage()
    cache.wait_s = 0.05
    readers = cache.readers_of(["objects", "scene", "faces"])
    for uri in "abcd":  # objects and visual run ahead; faces is far behind
        cache.get(storage, uri, 1 << 20, "objects", readers)
        cache.get(storage, uri, 1 << 20, "visual", readers)
    for uri in "ab":  # evicted before faces came: decoded again, owed to no one
        cache.get(storage, uri, 1 << 20, "faces", readers)
    t0 = __import__("time").perf_counter()
    cache.get(storage, "e", 1 << 20, "objects", readers)  # must not wait out wait_s on phantom entries
    assert __import__("time").perf_counter() - t0 < 0.04
    assert set(cache._items) <= {"c", "d", "e"}


def test_an_unregistered_agent_is_waited_for_no_more():
    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "ab":
        cache.get(storage, uri, 1 << 20, "objects", readers)
    cache.unregister("faces")
    assert len(cache) == 0 and cache.readers_of(["objects", "faces"]) == {"objects"}


def test_a_failed_decode_is_not_kept():
    cache, storage = cache_for(), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    with pytest.raises(FileNotFoundError):
        cache.get(storage, "missing", 1 << 20, "objects", readers)
    assert len(cache) == 0
    with pytest.raises(FileNotFoundError):
        cache.get(storage, "missing", 1 << 20, "faces", readers)
    assert storage.reads == ["missing", "missing"]


def test_non_rgb_derivatives_are_converted():
    cache, storage = cache_for(), CountingStorage(mode="L")
    assert cache.get(storage, "g", 1 << 20, "objects", {"objects"}).mode == "RGB"


def test_clear_forgets_entries_owed_to_agents():
    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "ab":
        cache.get(storage, uri, 1 << 20, "objects", readers)
    cache.clear()  # a rebalance: the records faces had buffered went to another worker
    assert len(cache) == 0
    cache.get(storage, "c", 1 << 20, "objects", readers)  # no wait for faces
    assert storage.reads == ["a", "b", "c"]


def test_split_keeps_order_and_balances_the_parts():
    from lensflow.streams.pixel import split

    assert split(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split(list(range(7)), 2) == [[0, 1, 2], [3, 4, 5, 6]]
    assert split([1], 3) == [[1]] and split([1, 2], 3) == [[1], [2]]
    assert split(list(range(5)), 1) == [[0, 1, 2, 3, 4]]
    assert [x for part in split(list(range(23)), 4) for x in part] == list(range(23))
