"""What decoding an image costs in memory, estimated from its header alone (``decode_cost``): the
decode budget (``streams/budget.py``) admits every decode against it. Preprocess uses it for the
originals, the pixel stages for the derivatives, the read service for enrolment photos; it lives in
the runtime so none of them reaches into another (it lived in ``agents/preprocess.py`` before)."""

from __future__ import annotations

from PIL import Image

# Bytes per pixel of Pillow's in-memory storage (libImaging/Storage.c): every 3- and 4-band mode,
# RGB and YCbCr included, takes 4 bytes; I and F take 4; the 16-bit modes 2; 1, L and P one byte.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "BGR;15": 2, "BGR;16": 2,
                "BGR;24": 3}
_MIB = 2 ** 20


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _pixel_bytes(mode: str) -> int:
    return _PIXEL_BYTES.get(mode, 4)


def _jpeg_scale(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) ``JpegImageFile.draft(mode, target)`` picks."""
    if target == size:
        return 1
    scale = min(size[0] // target[0], size[1] // target[1])
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def _jpeg_coefficients(img: Image.Image) -> int:
    """Bytes libjpeg allocates for the whole image's DCT coefficients when it must buffer them: a
    progressive JPEG, or a (baseline) one whose first scan does not carry every component. Held at
    full resolution whatever the draft scale (2 bytes per coefficient, per component sample). 0 for
    a single-scan baseline JPEG, which libjpeg decodes one MCU row at a time."""
    layers = getattr(img, "layer", None) or [(0, 1, 1, 0)] * 4
    if not (img.info.get("progressive") or img.info.get("progression") or _jpeg_first_scan_components(img) < len(layers)):
        return 0
    w, h = img.size
    hmax = max(max(1, hs) for _, hs, _, _ in layers)
    vmax = max(max(1, vs) for _, _, vs, _ in layers)
    total = 0
    for _, hs, vs, _ in layers:
        hs, vs = max(1, hs), max(1, vs)
        blocks_w = _ceil(_ceil(w * hs, hmax), 8) + hs  # whole 8x8 blocks, plus MCU padding
        blocks_h = _ceil(_ceil(h * vs, vmax), 8) + vs
        total += blocks_w * blocks_h * 64 * 2
    return total


def _jpeg_first_scan_components(img: Image.Image) -> int:
    """Components in the first scan (SOS) of an opened JPEG, read from its marker segments without
    decoding (the file position is restored); 0 when it cannot be read (counted as multi-scan)."""
    fp = getattr(img, "fp", None)
    if fp is None:
        return 0
    pos = fp.tell()
    try:
        fp.seek(2)  # after SOI
        for _ in range(4096):
            c = fp.read(1)
            if c != b"\xff":
                return 0
            while c == b"\xff":  # fill bytes
                c = fp.read(1)
            if not c:
                return 0
            marker = c[0]
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
                continue
            length = fp.read(2)
            if len(length) < 2:
                return 0
            if marker == 0xDA:  # SOS: Ns follows the length
                ns = fp.read(1)
                return ns[0] if ns else 0
            fp.seek(int.from_bytes(length, "big") - 2, 1)
        return 0
    except Exception:
        return 0
    finally:
        fp.seek(pos)


def decode_cost(img: Image.Image, fmt: str, target: tuple[int, int], reuse: bool = False) -> int:
    """Estimated peak bytes ``_prepare`` allocates to turn ``img`` (opened, not loaded) into a
    ``target``-sized JPEG derivative, from the header alone. Safe side: at least the measured peak,
    within ~2x of it.

    Phases, each holding what is alive at its peak (``D`` = pixels actually decoded: a JPEG is
    decoded at the DCT scale 1/2/4/8 ``draft`` picks, the smallest that still covers ``target``;
    ``T`` = target pixels; bytes per pixel as Pillow stores them, RGB and every 3-4 band mode 4):

    * decode: D x mode bytes, plus the codec's own buffers: libjpeg's whole-image DCT coefficients
      for a progressive or multi-scan JPEG (full resolution, ~3 B/px at 4:2:0, 6 B/px at 4:4:4);
      libwebp's two canvases and the frame copy Pillow decodes from (3 x 4 B/px); TIFF's strip
      buffer (<= 1 x); pillow-heif's decoded planes (2 x 4 B/px, not measured);
    * ``_to_rgb``: the decoded image, plus for RGBA/LA/PA/P+transparency the RGBA copy, the RGB
      background and the alpha channel (4 + 4 + 1 B/px), for 16-bit/I the point() result and the
      RGB image, for anything else the RGB image (4 B/px);
    * resize, from the RGB image (4 B/px): under 2x, OpenCV's path (``np.asarray`` goes through
      ``tobytes``: 3 B/px of chunks plus the 3 B/px join, then 7 B/px of T); 2x and more, Pillow's
      (the ``reducing_gap`` reduce() copy, the horizontal pass T-width x source height, the output);
    * transpose + encode: 2 x 4 B/px of T and the JPEG buffer (<= 3 B/px of T).

    ``reuse``: the original serves as its own derivative (a JPEG within the cap, orientation 1), so
    only the decode phase happens. Plus 4 MiB for codec state, row buffers and Python objects, and 10%.

    Calibration (``tracemalloc`` does not see Pillow's C allocations, so RSS): peak RSS of
    ``prepare()`` (max_side 1600), each case in a fresh ``python -c`` with codecs loaded first and
    ``malloc_trim(0)``; the high-water mark is reset to the current RSS with ``/proc/self/clear_refs``
    just before, and read as ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` and ``VmHWM`` after (the
    probe is forked by ``sh``, so ``ru_maxrss`` does not inherit the parent's high-water mark across
    exec; the two agree). Pillow 13.0, libjpeg-turbo, glibc malloc, x86-64, Python 3.11::

        $ .venv/bin/python -m tests.bombs measure     (peak, ru_maxrss: high-water mark after - RSS before)
        case                                file KB  mode  peak MiB  ru_maxrss MiB  estimate MiB  est/peak
        png_rgba_16mp_const.png (4000x4000)      67  RGBA     198.5          198.5         222.6      1.12
        png_rgb_16mp_const.png                   52  RGB       95.4           95.4         109.1      1.14
        png_gray16_16mp.png (16-bit gray)        37  I;16     122.1          122.1         138.7      1.14
        png_p_trns_16mp.png (palette + tRNS)     15  P        152.6          152.6         172.2      1.13
        jpeg_24mp_baseline.jpg (6000x4000)     6484  RGB       57.2           57.2          67.3      1.18
        jpeg_24mp_progressive.jpg              5589  RGB       91.7           91.7         105.6      1.15
        jpeg_2mp_baseline.jpg (1600x1200)       519  RGB        7.5            7.5          12.5      1.67
        gif_palette_16mp.gif                  11516  P         95.5           95.5         109.1      1.14
        webp_rgba_16mp.webp                    2324  RGB      249.1          249.1         273.0      1.10
        tiff_rgb_16mp.tif (deflate)           44654  RGB       95.9           95.9         138.7      1.45
        png_rgba_2mp_const.png (1920x1080)        9  RGBA      25.5           25.5          32.7      1.28
        png_rgba_100mp_const.png (10000^2)      395  RGBA    1240.1         1240.1        1368.2      1.10
        samples/photos/bicycle_street_orientation6.jpg (12 MP, rotated)   28.9 / 28.9 -> 40.9    1.41
        samples/photos/office_kitchen_fruit.jpg (12 MP, progressive)      46.7 / 46.7 -> 55.9    1.20
        samples/photos/obama_portrait.jpg (1 MP, served as is)             4.1 /  4.1 ->  8.7    2.13
    """
    w, h = img.size
    tw, th = target
    mode = img.mode
    bpp = _pixel_bytes(mode)
    persistent = 0  # codec buffers that live as long as the decoded image
    transient = 0  # codec buffers freed when load() returns
    if fmt == "JPEG":
        s = _jpeg_scale((w, h), (tw, th)) if len(getattr(img, "tile", ())) == 1 else 1
        dw, dh = _ceil(w, s), _ceil(h, s)
        transient = _jpeg_coefficients(img)
    else:
        dw, dh = w, h
    d, t = dw * dh, tw * th
    if fmt == "WEBP":
        persistent = 2 * 4 * d  # WebPAnimDecoder's canvases, held by the image until it is freed
        transient = 4 * d  # the frame's bytes that Pillow decodes from
    elif fmt == "TIFF":
        transient = bpp * d
    elif fmt in ("HEIF", "AVIF"):
        persistent = 2 * 4 * d
    decoded = bpp * d + persistent
    phase_decode = decoded + transient

    if mode == "RGB":
        to_rgb = 0
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        to_rgb = (4 + 4 + 1) * d
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        to_rgb = (bpp + 4) * d
    elif mode == "F":
        to_rgb = (1 + 4) * d
    else:
        to_rgb = 4 * d
    phase_rgb = decoded + to_rgb

    rgb = 4 * d + (persistent if mode == "RGB" else 0)  # the same image (and decoder) when already RGB
    if (dw, dh) == (tw, th):
        phase_resize = 0
    elif dw < 2 * tw and dh < 2 * th:  # shrink(): OpenCV
        phase_resize = rgb + max(6 * d, 3 * d + 7 * t)
    else:  # shrink(): Pillow, reducing_gap=3
        fx, fy = max(1, int(dw / tw / 3.0)), max(1, int(dh / th / 3.0))
        reduced = _ceil(dw, fx) * _ceil(dh, fy) if fx > 1 or fy > 1 else 0
        src_h = _ceil(dh, fy)
        phase_resize = rgb + 4 * (reduced + tw * src_h + t)
    phase_tail = 4 * t * 2 + 3 * t

    peak = phase_decode if reuse else max(phase_decode, phase_rgb, phase_resize, phase_tail)
    return int((peak + 4 * _MIB) * 1.1)
