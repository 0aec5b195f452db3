"""Hostile inputs for tests: decompression bombs just under a pixel limit, truncated JPEGs, garbage.

Test-only. The PNG bombs are written row by row through a streaming zlib compressor, so a
10000x10000 RGBA bomb (400 MB decoded) is generated in ~one row of memory and is a few hundred KB
on disk. ``python -m tests.bombs measure`` re-runs the peak-memory calibration quoted in
``lensflow.streams.decode_cost.decode_cost`` (each case in a fresh interpreter).
"""

from __future__ import annotations

import io
import math
import os
import random
import struct
import zlib
from pathlib import Path

PHOTOS = Path(__file__).resolve().parent.parent / "samples" / "photos"

# PNG colour type and bytes per sample for the modes a bomb can take
_PNG_MODES = {"L": (0, 1), "RGB": (2, 3), "P": (3, 1), "LA": (4, 2), "RGBA": (6, 4)}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, mode: str = "RGBA", color: tuple[int, ...] | int | None = None,
             bit_depth: int = 8, transparent_index: int | None = None) -> bytes:
    """A valid PNG of ``width`` x ``height`` pixels of one colour, tiny on disk.

    ``mode``: L, RGB, P, LA or RGBA; ``bit_depth`` 16 for 16-bit samples (L → Pillow's ``I;16``).
    ``P`` writes a one-entry palette (``transparent_index=0`` adds a tRNS chunk: the image then goes
    through the RGBA compositing path). The IDAT is built by compressing the same row ``height``
    times through one ``zlib.compressobj``: memory is one row, never the image.
    """
    color_type, samples = _PNG_MODES[mode]
    if bit_depth not in (8, 16) or (bit_depth == 16 and mode == "P"):
        raise ValueError("bit_depth is 8, or 16 for non-palette modes")
    if color is None:
        color = {"L": 200, "P": 0, "LA": (200, 128), "RGB": (10, 120, 200), "RGBA": (10, 120, 200, 128)}[mode]
    sample_values = (color,) if isinstance(color, int) else tuple(color)
    if len(sample_values) != samples:
        raise ValueError(f"{mode} needs {samples} sample(s), got {sample_values}")
    if bit_depth == 8:
        pixel = bytes(sample_values)
    else:
        pixel = b"".join(struct.pack(">H", v * 257 if v < 256 else v) for v in sample_values)
    row = b"\x00" + pixel * width  # filter type 0 (None) + the pixels
    z = zlib.compressobj(9)
    parts = []
    for _ in range(height):
        part = z.compress(row)
        if part:
            parts.append(part)
    parts.append(z.flush())
    idat = b"".join(parts)
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))]
    if mode == "P":
        out.append(_chunk(b"PLTE", bytes((10, 120, 200))))
        if transparent_index is not None:
            out.append(_chunk(b"tRNS", bytes([0] * (transparent_index + 1))))
    # IDAT split in 1 MB chunks, as encoders do
    for i in range(0, max(1, len(idat)), 1 << 20):
        out.append(_chunk(b"IDAT", idat[i:i + (1 << 20)]))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def near_limit_png(max_pixels: int, mode: str = "RGBA", aspect: float = 1.0) -> bytes:
    """The largest ``mode`` PNG bomb with ``width * height <= max_pixels`` (passes the pixel check)."""
    width = max(1, int(math.sqrt(max_pixels * aspect)))
    height = max(1, max_pixels // width)
    return png_bomb(width, height, mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no data behind it."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def jpeg(width: int, height: int, color: tuple[int, int, int] = (10, 120, 200), **save) -> bytes:
    """A JPEG of one colour (allocates the image: keep it to photo sizes). ``progressive=True`` etc. pass on."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", **save)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int, progressive: bool = False) -> bytes:
    """A small JPEG whose frame header (SOF) claims ``width`` x ``height``: header-level tests of huge
    JPEGs without encoding one (decoding it fails or yields garbage)."""
    data = bytearray(jpeg(16, 16, progressive=progressive))
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def many_page_tiff(pages: int, width: int = 64, height: int = 48) -> bytes:
    """A valid little-endian TIFF of ``pages`` ``width`` x ``height`` grey pages sharing one strip:
    ~114 bytes a page (100k pages ~11 MB), built without Pillow. Pillow's ``n_frames`` walks every
    page, quadratically (the CPU bomb); frame 0 decodes like any small image."""
    strip = bytes(range(256)) * (width * height // 256 + 1)
    strip = strip[: width * height]
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 3, height), (279, 4, width * height)]
    ifd_size = 2 + 12 * len(entries) + 4
    first = 8 + len(strip) + (len(strip) & 1)
    out = [b"II*\x00", struct.pack("<I", first), strip, b"\x00" * (len(strip) & 1)]
    for page in range(pages):
        nxt = first + (page + 1) * ifd_size if page + 1 < pages else 0
        ifd = [struct.pack("<H", len(entries))]
        for tag, kind, value in entries:
            ifd.append(struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)))
        ifd.append(struct.pack("<I", nxt))
        out.append(b"".join(ifd))
    return b"".join(out)


def many_frame_gif(frames: int, width: int = 32, height: int = 24) -> bytes:
    """A GIF whose one small frame (made by Pillow) is repeated ``frames`` times: ~30 bytes a frame."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (width, height), 1).save(buf, "GIF")
    data = buf.getvalue()
    start = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global colour table
    assert data.endswith(b";")
    return data[:start] + data[start:-1] * frames + b";"


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``data`` (a truncated upload: header intact, pixels cut)."""
    return data[: max(1, int(len(data) * keep))]


def truncated_jpeg(width: int = 640, height: int = 480, keep: float = 0.5) -> bytes:
    return truncated(jpeg(width, height), keep)


_MAGIC = {"JPEG": b"\xff\xd8\xff\xe0", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF89a", "TIFF": b"II*\x00",
          "WEBP": b"RIFF\x00\x00\x00\x00WEBP", "BMP": b"BM"}


def garbage(size: int = 4096, seed: int = 0, magic: str | None = None) -> bytes:
    """``size`` random bytes (deterministic per ``seed``); ``magic`` (e.g. "PNG") prefixes that
    format's magic bytes, so the sniffer admits it and the decoder has to refuse it."""
    rnd = random.Random(seed)
    body = rnd.randbytes(size)
    if magic is None:
        return body
    head = _MAGIC[magic]
    if magic == "BMP":
        head += b"\x00" * 24
    return head + body[len(head):]


# ---------------------------------------------------------------------------------------------
# Calibration of decode_cost: peak RSS of prepare() per case, each in a fresh interpreter.
# ---------------------------------------------------------------------------------------------

_PROBE = r"""
import json, resource, sys
from lensflow.agents.preprocess import Limits, prepare, _target
from lensflow.streams.decode_cost import decode_cost
from PIL import Image
import io, cv2, numpy
L = Limits(max_bytes=1 << 30, max_pixels=200_000_000, max_side=1600, jpeg_quality=85,
           formats=["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
W = Limits(max_bytes=1 << 30, max_pixels=200_000_000, max_side=64, jpeg_quality=85, formats=L.formats)
for warm in ("PNG", "JPEG", "GIF", "WEBP", "TIFF"):  # codecs and lazy imports loaded, both resize paths run
    for size in ((100, 75), (400, 300)):
        b = io.BytesIO(); Image.new("RGBA" if warm in ("PNG", "WEBP") else "RGB", size).save(b, warm); prepare(b.getvalue(), W)
data = open(sys.argv[1], "rb").read()
img = Image.open(io.BytesIO(data)); fmt = img.format if img.format != "MPO" else "JPEG"
t = _target(*img.size, L.max_side)
reuse = fmt == "JPEG" and img.getexif().get(274, 1) == 1 and t == img.size and img.mode in ("RGB", "L")
est = decode_cost(img, fmt, t, reuse=reuse); mode = img.mode; del img

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

import ctypes; ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS: measure from a clean slate
rss0 = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark (VmHWM) to the current RSS
maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = prepare(data, L)
maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": status("VmHWM") - rss0, "maxrss_delta": maxrss1 - rss0, "estimate": est,
                  "mode": mode, "error": out.error and out.error.code, "size": out.fields.get("width")}))
"""


def _cases(tmp: str) -> list[tuple[str, str]]:
    from PIL import Image

    def save(name: str, img_or_bytes, fmt: str | None = None, **kw) -> tuple[str, str]:
        path = os.path.join(tmp, name)
        if isinstance(img_or_bytes, bytes):
            open(path, "wb").write(img_or_bytes)
        else:
            img_or_bytes.save(path, fmt, **kw)
        return name, path

    def photo(w: int, h: int) -> "Image.Image":  # noise-textured RGB, so JPEGs are photo-sized
        small = Image.merge("RGB", [Image.effect_noise((w // 8, h // 8), 60 + 20 * i) for i in range(3)])
        return small.resize((w, h), Image.Resampling.BILINEAR)

    return [
        save("png_rgba_16mp_const.png", png_bomb(4000, 4000, "RGBA")),
        save("png_rgb_16mp_const.png", png_bomb(4000, 4000, "RGB")),
        save("png_gray16_16mp.png", png_bomb(4000, 4000, "L", bit_depth=16)),
        save("png_p_trns_16mp.png", png_bomb(4000, 4000, "P", transparent_index=0)),
        save("jpeg_24mp_baseline.jpg", photo(6000, 4000), "JPEG", quality=90),
        save("jpeg_24mp_progressive.jpg", photo(6000, 4000), "JPEG", quality=90, progressive=True),
        save("jpeg_2mp_baseline.jpg", photo(1600, 1200), "JPEG", quality=90),
        save("gif_palette_16mp.gif", photo(4000, 4000).convert("P"), "GIF"),
        save("webp_rgba_16mp.webp", photo(4000, 4000).convert("RGBA"), "WEBP", quality=80),
        save("tiff_rgb_16mp.tif", photo(4000, 4000), "TIFF", compression="tiff_deflate"),
        save("png_rgba_2mp_const.png", png_bomb(1920, 1080, "RGBA")),
        save("png_rgba_100mp_const.png", png_bomb(10000, 10000, "RGBA")),
    ] + [(f"sample:{name}", str(PHOTOS / name)) for name in (
        "bicycle_street_orientation6.jpg", "office_kitchen_fruit.jpg", "obama_portrait.jpg")]


def measure() -> None:
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'case':40} {'file KB':>8} {'mode':>6} {'peak MiB':>9} {'ru_maxrss MiB':>14} {'estimate MiB':>13} {'est/peak':>8}")
        for name, path in _cases(tmp):
            # through sh, which forks (not execs) python: ru_maxrss would otherwise inherit this
            # process's high-water mark across the exec, and clear_refs cannot reset that part
            cmd = ["sh", "-c", '"$0" -c "$1" "$2"; exit $?', sys.executable, _PROBE, path]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            mib = 2 ** 20
            print(f"{name:40} {os.path.getsize(path) // 1024:>8} {res['mode']:>6} {res['peak'] / mib:>9.1f} "
                  f"{res['maxrss_delta'] / mib:>14.1f} {res['estimate'] / mib:>13.1f} "
                  f"{res['estimate'] / max(1, res['peak']):>8.2f}{'  ' + res['error'] if res['error'] else ''}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["measure"]:
        measure()
    else:
        print("usage: python -m tests.bombs measure")
