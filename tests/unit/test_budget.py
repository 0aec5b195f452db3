"""The decode memory budget: admission, waiting, refusal; decode_cost from the header; prepare() under a budget."""

import io
import threading
import time

import pytest
from PIL import Image, ImageFile

from lensflow.agents.preprocess import Limits, _target, prepare
from lensflow.streams.decode_cost import _jpeg_scale, decode_cost
from lensflow.streams.budget import MemoryBudget
from lensflow.streams.errors import ErrorCode, StageFailure
from tests.bombs import garbage, jpeg, jpeg_claiming, near_limit_png, png_bomb, truncated_jpeg
from tests.conftest import PHOTOS

MiB = 2 ** 20
LIMITS = Limits(max_bytes=20 * MiB, max_pixels=100_000_000, max_side=1600, jpeg_quality=85,
                formats=["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])


def budget(mib: float) -> MemoryBudget:
    return MemoryBudget(int(mib * MiB), malloc_mmap_threshold=None)


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# --- MemoryBudget ---------------------------------------------------------------------------------

def test_budget_admits_reservations_that_fit_together():
    b = budget(100)
    with b.reserve(40 * MiB):
        with b.reserve(60 * MiB):  # exactly the total
            assert b.used == 100 * MiB and b.available == 0
        assert b.used == 40 * MiB
    assert b.used == 0


def test_budget_is_released_when_the_block_raises():
    b = budget(10)
    with pytest.raises(RuntimeError):
        with b.reserve(8 * MiB):
            raise RuntimeError("decode blew up")
    assert b.used == 0


def _reserve_in_thread(b: MemoryBudget, nbytes: int, admitted: list, name: str, hold: threading.Event | None = None,
                       **kw) -> threading.Thread:
    def run():
        with b.reserve(nbytes, **kw):
            admitted.append(name)
            if hold is not None:
                hold.wait(5)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_second_reservation_waits_until_the_first_is_released():
    b = budget(100)
    admitted: list[str] = []
    release_first = threading.Event()
    first = _reserve_in_thread(b, 80 * MiB, admitted, "first", release_first)
    assert _wait_for(lambda: admitted == ["first"])
    second = _reserve_in_thread(b, 50 * MiB, admitted, "second")
    assert _wait_for(lambda: b.waiting == 1)
    time.sleep(0.1)
    assert admitted == ["first"], "80 + 50 MiB do not fit in 100: the second must wait"
    release_first.set()
    first.join(5)
    second.join(5)
    assert admitted == ["first", "second"] and b.used == 0


def test_waiting_is_first_come_first_served_so_a_large_decode_is_not_starved():
    b = budget(100)
    admitted: list[str] = []
    release = threading.Event()
    holder = _reserve_in_thread(b, 60 * MiB, admitted, "holder", release)
    assert _wait_for(lambda: admitted == ["holder"])
    large = _reserve_in_thread(b, 80 * MiB, admitted, "large")
    assert _wait_for(lambda: b.waiting == 1)
    small = _reserve_in_thread(b, 10 * MiB, admitted, "small")  # would fit now, but queues behind "large"
    assert _wait_for(lambda: b.waiting == 2)
    time.sleep(0.1)
    assert admitted == ["holder"]
    release.set()
    for t in (holder, large, small):
        t.join(5)
    assert admitted == ["holder", "large", "small"]


def test_waiting_past_the_timeout_does_not_fail_the_image():
    b = budget(10)
    admitted: list[str] = []
    release = threading.Event()
    holder = _reserve_in_thread(b, 10 * MiB, admitted, "holder", release)
    assert _wait_for(lambda: admitted == ["holder"])
    waiter = _reserve_in_thread(b, 5 * MiB, admitted, "waiter", timeout_s=0.02)
    time.sleep(0.2)  # ten timeouts pass: logged, still waiting
    assert admitted == ["holder"] and waiter.is_alive()
    release.set()
    waiter.join(5)
    assert admitted == ["holder", "waiter"]


def test_a_reservation_over_the_whole_budget_is_refused_at_once():
    b = budget(10)
    started = time.monotonic()
    with pytest.raises(StageFailure) as err:
        with b.reserve(11 * MiB, timeout_s=None, what="4000x4000 RGBA PNG"):
            pytest.fail("must not be admitted")
    assert time.monotonic() - started < 1
    assert err.value.code == ErrorCode.OVER_MEMORY_BUDGET and not err.value.retryable
    assert "4000x4000 RGBA PNG needs ~11 MiB to decode, over the 10 MiB budget (LENSFLOW_DECODE_MEMORY_MB)" == err.value.message
    assert b.used == 0 and b.waiting == 0


def test_budget_needs_a_positive_total():
    with pytest.raises(ValueError):
        MemoryBudget(0)


# --- decode_cost --------------------------------------------------------------------------------------

def test_png_bomb_is_tiny_on_disk_and_costs_its_decoded_size():
    data = png_bomb(4000, 4000, "RGBA")
    assert len(data) < 200_000  # ~65 KB for 16 MP: a decompression bomb
    img = opened(data)
    assert img.size == (4000, 4000) and img.mode == "RGBA"
    cost = decode_cost(img, "PNG", (1600, 1600))
    assert cost >= 64 * MiB  # the decoded RGBA alone
    assert 198 * MiB <= cost <= 2 * 198 * MiB  # measured peak 198.5 MiB (see decode_cost's docstring)
    assert img.tile, "decode_cost must not decode"


def test_cost_grows_with_pixels_and_mode():
    rgba = decode_cost(opened(png_bomb(2000, 2000, "RGBA")), "PNG", (1600, 1600))
    rgb = decode_cost(opened(png_bomb(2000, 2000, "RGB")), "PNG", (1600, 1600))
    gray = decode_cost(opened(png_bomb(2000, 2000, "L")), "PNG", (1600, 1600))
    big = decode_cost(opened(png_bomb(4000, 4000, "RGBA")), "PNG", (1600, 1600))
    assert gray <= rgb < rgba < big  # L is converted to RGB (4 B/px) before the resize, as RGB is


@pytest.mark.parametrize("size,target,scale", [
    ((6000, 4000), (1600, 1067), 2), ((4032, 3024), (1600, 1200), 2), ((12800, 9600), (1600, 1200), 8),
    ((6400, 4800), (1600, 1200), 4), ((1600, 1200), (1600, 1200), 1), ((2000, 1500), (1600, 1200), 1)])
def test_jpeg_scale_is_the_one_draft_picks(size, target, scale):
    assert _jpeg_scale(size, target) == scale
    img = opened(jpeg_claiming(*size))
    img.draft("RGB", target)
    assert img.size == (-(-size[0] // scale), -(-size[1] // scale))


def test_jpeg_cost_counts_the_reduced_dct_scale():
    img = opened(jpeg_claiming(6400, 4800))
    reduced = decode_cost(img, "JPEG", (1600, 1200))  # decoded at 1/4: 1.9 MP
    png = decode_cost(opened(png_bomb(6400, 4800, "RGB")), "PNG", (1600, 1200))  # decoded in full: 30.7 MP
    assert reduced < png / 4


def test_progressive_jpeg_counts_the_whole_image_coefficient_buffer():
    base = decode_cost(opened(jpeg_claiming(8000, 6000)), "JPEG", (1600, 1200))
    prog = decode_cost(opened(jpeg_claiming(8000, 6000, progressive=True)), "JPEG", (1600, 1200))
    assert prog >= 8000 * 6000 * 3  # 2 bytes per coefficient, 4:2:0: 1.5 samples per pixel
    assert base < 50 * MiB  # decoded at 1/4 scale: 3 MP


def test_baseline_jpeg_whose_first_scan_lacks_components_counts_the_coefficient_buffer():
    data = bytearray(jpeg_claiming(8000, 6000))
    sos = data.index(b"\xff\xda")
    assert data[sos + 4] == 3
    data[sos + 4] = 1  # a non-interleaved (multi-scan) baseline JPEG: libjpeg buffers every coefficient
    base = decode_cost(opened(jpeg_claiming(8000, 6000)), "JPEG", (1600, 1200))
    assert base < 50 * MiB
    assert decode_cost(opened(bytes(data)), "JPEG", (1600, 1200)) >= 8000 * 6000 * 3


def test_image_served_as_is_costs_only_its_decode():
    img = opened(jpeg(1600, 1200))
    assert decode_cost(img, "JPEG", (1600, 1200), reuse=True) < decode_cost(img, "JPEG", (1600, 1200))


# --- prepare() under a budget -------------------------------------------------------------------------

def test_bomb_over_a_small_budget_fails_with_the_code_and_is_never_decoded(monkeypatch):
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or real_load(self))
    b = budget(10)
    out = prepare(png_bomb(4000, 4000, "RGBA"), LIMITS, b)
    assert out.error is not None and out.error.code == "over_memory_budget"
    assert "LENSFLOW_DECODE_MEMORY_MB" in out.error.message and "4000x4000 RGBA PNG" in out.error.message
    assert loads == [], "refused from the header: no pixel decoded (not even for PNG's EXIF)"
    assert out.derivative is None and b.used == 0
    assert out.error.__traceback__ is None


def test_near_limit_bomb_under_the_default_budget_is_admitted_and_released():
    b = budget(1024)
    out = prepare(near_limit_png(4_000_000), LIMITS, b)
    assert out.error is None and out.fields["width"] == 1600
    assert b.used == 0


def test_hundred_megapixel_rgba_bomb_is_refused_by_the_default_budget():
    img = opened(png_bomb(10000, 10000, "RGBA"))
    assert decode_cost(img, "PNG", (1600, 1600)) > 1024 * MiB  # measured peak 1240 MiB


@pytest.mark.parametrize("name", sorted(p.name for p in PHOTOS.glob("*.jpg")))
def test_normal_photos_pass_under_the_default_budget(name):
    data = (PHOTOS / name).read_bytes()
    b = budget(1024)
    out = prepare(data, LIMITS, b)
    assert out.error is None, out.error and out.error.message
    assert out.fields == prepare(data, LIMITS).fields  # the budget changes nothing for an image that fits
    assert b.used == 0
    img = opened(data)
    assert decode_cost(img, "JPEG", _target(*img.size, LIMITS.max_side)) < 100 * MiB


@pytest.mark.parametrize("data,code", [(truncated_jpeg(), "undecodable"), (garbage(), "not_an_image"),
                                       (garbage(magic="PNG"), "undecodable")])
def test_bad_input_under_a_budget_fails_as_before_and_releases(data, code):
    b = budget(1024)
    out = prepare(data, LIMITS, b)
    assert out.error.code == code and b.used == 0
