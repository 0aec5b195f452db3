"""The gallery (api/gallery/, the read service's web UI at /) in a real browser: Debian's headless
Chromium driven by Playwright (``executable_path``: Playwright's own browser download is not used;
``make test`` installs the package when it is missing), against a real worker that serves the read
service, on the real stack.

One user signs in with the development login, drops a photo on the page, sees it arrive in the grid
from its ``analyzed`` event without a reload, finds it by tag, opens it and sees the object box the
analysis holds drawn where the analysis puts it; a non-image is refused inline; Escape goes back to
the grid. A second user, signed in with a token of their own, sees neither the photo in the grid or a
search, nor its page.

The image page's screenshot is written to the test's tmp dir, and to docs/images/gallery-image.png
(the README's) with LENSFLOW_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PHOTOS

from .conftest import ROOT
from .helpers import wait_for
from .promise import fresh_namespace

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("LENSFLOW_CHROMIUM", "/usr/bin/chromium"))
#: a photo whose analysis holds a box of a known label (tests/integration/test_models.py)
PHOTO = PHOTOS / "cat_chelsea.png"
LABEL = "cat"
#: objects for the box, describe for the caption under the tile
STAGES = "metadata,objects,describe"
SCREENSHOT = ROOT / "docs" / "images" / "gallery-image.png"
#: seconds for one photo's analysis on 2 busy cores (models loaded on first use included)
ANALYSIS_S = 240
UI_S = 30  # seconds for the page to show what it already has


@pytest.fixture(scope="module")
def served(stack, models, tmp_path_factory):
    """A worker that owns Qdrant's local mode, so it serves the read service (at ``ns.api``)."""
    with fresh_namespace(stack, tmp_path_factory.mktemp("lensflow-gallery"), stages=STAGES) as ns:
        ns.start_worker(timeout=300)

        def ready():
            try:
                return httpx.get(f"{ns.api}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, message=f"the read service at {ns.api}/readyz\n{ns.log_tail()}")
        yield ns


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (as root it installs Debian's chromium), "
                    "or set LENSFLOW_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def new_page(browser, problems: list):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    return page


def drop_files(page, files: list[tuple[str, str, bytes]]) -> None:
    """Drag files onto the page and drop them: the events a browser sends for a drop from the desktop,
    with a DataTransfer holding real File objects."""
    page.evaluate("""(files) => {
        const dt = new DataTransfer();
        for (const [name, type, b64] of files) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type}));
        }
        const target = document.querySelector('#grid') || document.body;
        for (const kind of ['dragenter', 'dragover', 'drop']) {
            target.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }
    }""", [[name, ctype, base64.b64encode(data).decode()] for name, ctype, data in files])


def test_gallery_in_a_browser(served, browser, tmp_path):
    from playwright.sync_api import expect

    t0 = time.monotonic()
    base = served.api
    problems: list[str] = []

    # -- sign in with the development login --------------------------------------------------------
    page = new_page(browser, problems)
    page.goto(f"{base}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_role("button", name="Development login").click()
    expect(page.locator("#who")).to_have_text("demo")
    expect(page.get_by_text("No images yet — drop photos here")).to_be_visible(timeout=UI_S * 1000)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=UI_S * 1000)
    token = page.evaluate("sessionStorage.getItem('lensflow.token')")
    headers = {"Authorization": f"Bearer {token}"}

    # -- drop the photo on the page; it arrives in the grid by itself ------------------------------------
    page.evaluate("window.__notReloaded = true")
    drop_files(page, [(PHOTO.name, "image/png", PHOTO.read_bytes())])
    upload = page.locator("#uploads li", has_text=PHOTO.name)
    expect(upload).to_have_attribute("data-image-id", re.compile(r"."), timeout=UI_S * 1000)
    image_id = upload.get_attribute("data-image-id")
    assert image_id
    tile = page.locator(f'#grid li.tile[data-image-id="{image_id}"]')
    expect(tile).to_be_visible(timeout=ANALYSIS_S * 1000)
    expect(upload).to_have_attribute("data-state", "analysed")
    assert page.evaluate("window.__notReloaded === true"), "the page reloaded"
    expect(tile.locator("img")).to_have_attribute("src", re.compile(r"^blob:"), timeout=UI_S * 1000)
    doc = httpx.get(f"{base}/v1/images/{image_id}", headers=headers, timeout=30).json()
    assert doc["status"] == "complete", doc
    analysis = doc["analysis"]
    if analysis.get("caption"):
        expect(tile.locator(".tile-caption")).to_have_text(analysis["caption"])

    # -- a file that is not an image is refused inline -------------------------------------------------
    page.set_input_files("#file-picker", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    refused = page.locator("#uploads li", has_text="notes.txt")
    expect(refused).to_have_attribute("data-state", "failed", timeout=UI_S * 1000)
    expect(refused).to_contain_text("Not uploaded: not a readable image")

    # -- find it by tag (the keyboard: Enter submits) ---------------------------------------------------
    page.get_by_label("Search by").select_option("tag")
    page.get_by_label("Search your photos").fill(LABEL)
    page.get_by_label("Search your photos").press("Enter")
    expect(page.locator("#home-title")).to_have_text(f"Tagged “{LABEL}”")
    found = page.locator(f'#grid li.tile[data-image-id="{image_id}"]')
    expect(found).to_be_visible(timeout=UI_S * 1000)
    expect(page.locator("#grid li.tile")).to_have_count(1)

    # -- open it: the object box the analysis holds, where it holds it ---------------------------------
    found.get_by_role("link").click()
    expect(page).to_have_url(f"{base}/#/image/{image_id}")
    expect(page.locator("#view-image")).to_have_attribute("data-status", "ready", timeout=UI_S * 1000)
    objects = [o for o in analysis["objects"] or [] if o.get("box")]
    assert objects and objects[0]["label"] == LABEL, analysis["objects"]
    overlay = page.locator('#overlay .box[data-kind="object"]')
    expect(overlay).to_have_count(len(objects))
    assert overlay.evaluate_all("(boxes) => boxes.map((b) => b.dataset.label)") == [o["label"] for o in objects]
    box = page.locator(f'#overlay .box[data-kind="object"][data-label="{LABEL}"]').first
    expect(box).to_be_visible()
    expect(box).to_contain_text(LABEL)
    shown = page.locator("#photo").bounding_box()
    drawn = box.bounding_box()
    size = analysis["size"]  # stage boxes are in the oriented original's pixels; the derivative is a scaled copy
    sx, sy = shown["width"] / size["width"], shown["height"] / size["height"]
    want = objects[0]["box"]
    for got, expected in ((drawn["x"] - shown["x"], want["x1"] * sx), (drawn["y"] - shown["y"], want["y1"] * sy),
                          (drawn["width"], (want["x2"] - want["x1"]) * sx), (drawn["height"], (want["y2"] - want["y1"]) * sy)):
        assert abs(got - expected) <= 2.5, (drawn, shown, want, size)
    expect(page.locator("#details")).to_contain_text(f"{LABEL} — ")
    expect(page.locator("#details")).to_contain_text("Stages")
    page.screenshot(path=str(tmp_path / "gallery-image.png"))
    if os.environ.get("LENSFLOW_UPDATE_SCREENSHOTS"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

    # -- Escape closes the image page, back to the search with its tile focused -------------------------
    page.keyboard.press("Escape")
    expect(page.locator("#view-home")).to_be_visible()
    expect(page).to_have_url(f"{base}/#/search/tag/{LABEL}")
    expect(found.get_by_role("link")).to_be_focused()
    assert page.evaluate("window.__notReloaded === true"), "the page reloaded"

    # -- a second user, signed in with a token of their own, sees none of it ----------------------------
    other = new_page(browser, problems)
    other.goto(f"{base}/")
    other.get_by_label("Token").fill(served.token("bob"))
    other.get_by_role("button", name="Sign in with token").click()
    expect(other.locator("#who")).to_have_text("bob")
    expect(other.get_by_text("No images yet — drop photos here")).to_be_visible(timeout=UI_S * 1000)
    expect(other.locator("#grid li.tile")).to_have_count(0)
    other.get_by_label("Search by").select_option("tag")
    other.get_by_label("Search your photos").fill(LABEL)
    other.get_by_label("Search your photos").press("Enter")
    expect(other.get_by_text(f"Nothing found for “{LABEL}”.")).to_be_visible(timeout=UI_S * 1000)
    expect(other.locator("#grid li.tile")).to_have_count(0)
    other.goto(f"{base}/#/image/{image_id}")
    expect(other.locator("#image-error")).to_have_text("This photo does not exist, or is not yours.", timeout=UI_S * 1000)
    expect(other.locator("#overlay .box")).to_have_count(0)

    # -- signing out, and a refused token, lead back to the sign-in ------------------------------------
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    assert other.evaluate("sessionStorage.getItem('lensflow.token')") is None
    other.get_by_label("Token").fill(served.token("bob")[:-4] + "AAAA")
    other.get_by_role("button", name="Sign in with token").click()
    expect(other.locator("#signin-message")).to_contain_text("Please sign in again")

    assert not problems, problems
    print(f"\ngallery test: {time.monotonic() - t0:.1f}s in the browser")
