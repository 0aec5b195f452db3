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


def test_size_bounds_entries_and_a_late_reader_decodes_again():
    cache, storage = cache_for(size=2), CountingStorage()
    readers = cache.readers_of(["objects", "faces"])
    for uri in "abc":
        cache.get(storage, uri, 1 << 20, "objects", readers)
    assert len(cache) == 2
    cache.get(storage, "a", 1 << 20, "faces", readers)  # evicted: decoded again
    cache.get(storage, "c", 1 << 20, "faces", readers)  # still held
    assert storage.reads == ["a", "b", "c", "a"]


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


def test_pixel_agents_buffer_only_two_batches(tmp_path):
    """The bound that keeps the agents within the cache's reach; faust's app.topic() drops ``maxsize``,
    so this fails if the workaround in Context.topic goes."""
    from lensflow.streams.app import build
    from lensflow.streams.pixel import buffer_size
    from lensflow.streams.settings import Settings

    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    app, _ = build(settings, ["objects", "scene", "text", "join"])
    sizes = {name: agent.channel.clone(is_iterator=True).queue.maxsize for name, agent in app.agents.items()}
    assert sizes["objects"] == sizes["visual"] == sizes["text"] == buffer_size(settings) == 2 * settings.model_batch_size
    assert sizes["join"] == app.conf.stream_buffer_maxsize
