"""`helm test`: one small JPEG, made here, submitted to the release and followed until its analysis is
`complete`. Run by templates/tests/submit-test.yaml in the lensflow image (python, Pillow, the CLI):

  --api URL   through the read service: a token minted here by `lensflow token issue` (the pod has the
              HS256 secret), GET URL/readyz until the service is ready, POST URL/v1/images, then
              GET URL/v1/images/{id} until its status is no longer `processing`;
  --kafka     through Kafka: `lensflow submit --wait --json` with the workers' environment.

Exit 0 when the status is `complete`; 1 when it is `partial` or `failed` (the analysis is printed), or
nothing came within --timeout seconds. Every run submits new bytes (the time and random pixels are drawn
into the picture), so an earlier run's result cannot pass for this one's. tests/unit/test_chart.py runs
it against a stand-in read service and a stand-in CLI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request

from PIL import Image, ImageDraw


def log(message: str) -> None:
    print(f"submit-test: {message}", flush=True)


def make_jpeg() -> bytes:
    """A 480x360 JPEG: a gradient, a few shapes, the time in words and random pixels (new bytes each run)."""
    img = Image.new("RGB", (480, 360))
    draw = ImageDraw.Draw(img)
    for y in range(360):
        draw.line([(0, y), (479, y)], fill=(40 + y // 3, 90, 160 - y // 4))
    draw.rectangle([40, 200, 200, 320], fill=(200, 60, 40))
    draw.ellipse([260, 60, 420, 220], fill=(240, 210, 60))
    draw.text((20, 20), "lensflow helm test " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), fill=(255, 255, 255))
    rng = random.Random(os.urandom(16))
    for _ in range(200):
        draw.point((rng.randrange(480), rng.randrange(360)), fill=(rng.randrange(256),) * 3)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def request(method: str, url: str, token: str | None = None, body: bytes | None = None,
            content_type: str | None = None) -> tuple[int, dict]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else {}
        except ValueError:
            return exc.code, {"body": raw.decode(errors="replace")[:500]}


def via_api(base: str, user: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    token = subprocess.run(["lensflow", "token", "issue", "--user", user, "--ttl", f"{int(timeout) + 300}s"],
                           check=True, capture_output=True, text=True).stdout.strip()
    log(f"token minted for {user}; waiting for {base}/readyz")
    while True:
        try:
            status, _ = request("GET", f"{base}/readyz")
        except OSError as exc:  # not resolvable or not listening yet
            status = str(exc)
        if status == 200:
            break
        if time.monotonic() > deadline:
            log(f"the read service was not ready within {timeout:.0f}s (last answer: {status})")
            return 1
        time.sleep(2)
    data = make_jpeg()
    status, body = request("POST", f"{base}/v1/images", token, data, "image/jpeg")
    if status != 202:
        log(f"POST /v1/images answered {status}: {json.dumps(body)}")
        return 1
    image_id = body["image_id"]
    log(f"submitted {len(data)} bytes as {image_id}")
    last = None
    while time.monotonic() < deadline:
        status, doc = request("GET", f"{base}/v1/images/{image_id}", token)
        if status == 200:
            last = doc.get("status")
            if last == "complete":
                log(f"{image_id} complete")
                return 0
            if last not in (None, "processing", "submitted"):
                log(f"{image_id} is {last}, not complete: {json.dumps(doc)[:4000]}")
                return 1
        elif status != 404:  # 404: not stored yet
            log(f"GET /v1/images/{image_id} answered {status}: {json.dumps(doc)}")
            return 1
        time.sleep(2)
    log(f"{image_id} not complete within {timeout:.0f}s (last status: {last})")
    return 1


def via_kafka(user: str, timeout: float) -> int:
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"helm-test-{os.getpid()}.jpg")
    with open(path, "wb") as f:
        f.write(make_jpeg())
    log(f"lensflow submit --wait {path}")
    proc = subprocess.run(["lensflow", "submit", "--user", user, "--wait", "--json", "--timeout", str(int(timeout)), path],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if proc.returncode == 0 and result.get("status") == "complete":
        log(f"{result['image_id']} complete in {result.get('seconds')}s")
        return 0
    log(f"lensflow submit exited {proc.returncode}; result: {json.dumps(result) or '(none)'}")
    sys.stderr.write(proc.stderr[-4000:])
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "helm test: submit one image").split("\n\n")[0])
    way = ap.add_mutually_exclusive_group(required=True)
    way.add_argument("--api", metavar="URL", help="the read service's base URL")
    way.add_argument("--kafka", action="store_true", help="submit through Kafka (lensflow submit --wait)")
    ap.add_argument("--user", default="helm-test")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    if args.api:
        return via_api(args.api.rstrip("/"), args.user, args.timeout)
    return via_kafka(args.user, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
