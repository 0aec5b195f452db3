"""DecodedCache: one decode per image for all the agents of a worker that read it, bounded memory."""

import hashlib
import io

import pytest
from PIL import Image

from lensflow.streams.pixel import DecodedCache, Derivative


class CountingStorage:
    """Every URI holds the same small JPEG derivative; ``at(uri)`` is what its record says of it."""

    def __init__(self, mode="RGB"):
        buf = io.BytesIO()
        Image.new(mode, (64, 48), 128 if mode == "L" else (10, 20, 30)).save(buf, "JPEG")
        self.data = buf.getvalue()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.reads: list[str] = []

    def read(self, uri: str, max_bytes: int) -> bytes:
        self.reads.append(uri)
        if uri.startswith("missing"):
            raise FileNotFoundError(uri)
        return self.data


class Cache(DecodedCache):
    """``get`` by URI, as the agents' records name the derivative (the tests read like the agents)."""

    def get(self, storage, uri, reader="", readers=frozenset()):
        return super().get(storage, Derivative(uri, storage.sha256, 64, 48), reader, readers)

    def uris(self) -> set[str]:
        return {uri for uri, _ in self._items}


def cache_for(size=8):
    cache = Cache(size)
    cache.register("objects", ["objects"])
    cache.register("visual", ["scene", "embedding"])
    cache.register("faces", ["faces"])
    return cache


def test_one_decode_serves_every_reader_then_the_entry_is_dropped():
    cache, storage = cache_for(), CountingStorage()
    readers = cache.readers_of(["objects", "scene", "faces", "metadata"])
    assert readers == {"objects", "visual", "faces"}
    images = [cache.get(storage, "a", r, readers) for r in ("visual", "objects", "faces")]
    assert storage.reads == ["a"]
    assert images[0] is images[1] is images[2] and images[0].mode == "RGB"
    assert len(cache) == 0  # the last reader released it
    cache.get(storage, "a", "visual", readers)  # a redelivery decodes again
    assert storage.reads == ["a", "a"]


def test_only_the_agents_an_image_expects_hold_it():
    cache, storage = cache_for(), CountingStorage()
    readers = cache.readers_of(["objects"])
    cache.get(storage, "a", "objects", readers)
    assert len(cache) == 0  # nobody else will ask: not kept


def test_a_full_cache_holds_the_fast_agent_until_a_slow_one_catches_up():
    import threading
    import time

    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "ab":
        cache.get(storage, uri, "objects", readers)
    done = threading.Event()
    fast = threading.Thread(target=lambda: (cache.get(storage, "c", "objects", readers), done.set()))
    fast.start()
    time.sleep(0.2)
    assert not done.is_set() and len(cache) == 2  # waiting: "a" and "b" are still owed to faces
    cache.get(storage, "a", "faces", readers)  # the slow agent catches up and releases "a"
    fast.join(5)
    assert done.is_set()
    cache.get(storage, "b", "faces", readers)
    cache.get(storage, "c", "faces", readers)
    assert storage.reads == ["a", "b", "c"] and len(cache) == 0  # each decoded once


def test_an_agent_that_never_comes_slows_the_others_but_never_stops_them():
    cache, storage = cache_for(size=2), CountingStorage()
    cache.wait_s = 0.05
    readers = cache.readers_of(["objects", "faces"])
    for uri in "abcd":
        cache.get(storage, uri, "objects", readers)  # faces never reads
    assert len(cache) == 2
    cache.get(storage, "a", "faces", readers)  # evicted long ago: decoded again
    assert storage.reads == ["a", "b", "c", "d", "a"]
    # objects had "a" before it was evicted: the copy decoded again for faces waits for no one
    assert "a" not in cache.uris()


def test_an_entry_decoded_again_after_eviction_waits_only_for_readers_that_never_had_it():
    """A slow agent far behind (a backlog after a restart) re-decodes evicted images: those copies must
    not wait for the fast agents that already read them, or they fill the cache and stall everyone."""
    cache, storage = cache_for(size=2), CountingStorage()
    cache.wait_s = 0.05
    readers = cache.readers_of(["objects", "scene", "faces"])
    for uri in "abcd":  # objects and visual run ahead; faces is far behind
        cache.get(storage, uri, "objects", readers)
        cache.get(storage, uri, "visual", readers)
    for uri in "ab":  # evicted before faces came: decoded again, owed to no one
        cache.get(storage, uri, "faces", readers)
    t0 = __import__("time").perf_counter()
    cache.get(storage, "e", "objects", readers)  # must not wait out wait_s on phantom entries
    assert __import__("time").perf_counter() - t0 < 0.04
    assert cache.uris() <= {"c", "d", "e"}


def test_an_unregistered_agent_is_waited_for_no_more():
    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "ab":
        cache.get(storage, uri, "objects", readers)
    cache.unregister("faces")
    assert len(cache) == 0 and cache.readers_of(["objects", "faces"]) == {"objects"}


def test_a_transiently_failed_read_is_not_kept():
    class Flaky(CountingStorage):
        def read(self, uri, max_bytes):
            self.reads.append(uri)
            raise ConnectionResetError(uri)

    cache, storage = cache_for(), Flaky()
    readers = cache.readers_of(["objects", "faces"])
    with pytest.raises(ConnectionResetError):
        cache.get(storage, "a", "objects", readers)
    assert len(cache) == 0
    with pytest.raises(ConnectionResetError):
        cache.get(storage, "a", "faces", readers)
    assert storage.reads == ["a", "a"]  # each reader tries again


def test_a_decode_failed_for_good_fails_every_reader_once():
    """A missing or changed derivative is read and refused once: the other agents that expect the
    image get the same failure at once (a decode_timeout must not be waited out once per agent)."""
    cache, storage = cache_for(), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    with pytest.raises(FileNotFoundError):
        cache.get(storage, "missing", "objects", readers)
    assert len(cache) == 1
    with pytest.raises(FileNotFoundError) as failed:
        cache.get(storage, "missing", "faces", readers)
    assert storage.reads == ["missing"] and len(cache) == 0
    import traceback

    frames = {f.f_code.co_name for f, _ in traceback.walk_tb(failed.value.__traceback__)}
    assert not frames & {"decode_derivative", "read"}, frames  # kept without the frames (and bytes) of the decode


def test_non_rgb_derivatives_are_converted():
    cache, storage = cache_for(), CountingStorage(mode="L")
    assert cache.get(storage, "g", "objects", {"objects"}).mode == "RGB"


def test_clear_forgets_entries_owed_to_agents():
    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "ab":
        cache.get(storage, uri, "objects", readers)
    cache.clear()  # a rebalance: the records faces had buffered went to another worker
    assert len(cache) == 0
    cache.get(storage, "c", "objects", readers)  # no wait for faces
    assert storage.reads == ["a", "b", "c"]


def test_split_keeps_order_and_balances_the_parts():
    from lensflow.streams.pixel import split

    assert split(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split(list(range(7)), 2) == [[0, 1, 2], [3, 4, 5, 6]]
    assert split([1], 3) == [[1]] and split([1, 2], 3) == [[1], [2]]
    assert split(list(range(5)), 1) == [[0, 1, 2, 3, 4]]
    assert [x for part in split(list(range(23)), 4) for x in part] == list(range(23))
