"""The search page in a real browser: Debian's chromium driven by Playwright.

Screenshots go to ``artifacts/`` (git-ignored) for people to look at.
"""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import OPTS, serving, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = os.environ.get("USESEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# A closed network: without these, chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# An image name that is also markup: the page must show it as text.
HOSTILE_NAME = "<i id=injected>cup.png"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here: `sh tests/install-services.sh` installs Debian's"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    photos = write_photos(root / "photos", ("astronaut", "chelsea", "coffee"))
    # Mirrored: identical bytes under a second name would be skipped as a duplicate.
    Image.open(next(photos.rglob("coffee.png"))).transpose(Image.FLIP_LEFT_RIGHT).save(photos / HOSTILE_NAME)
    index_paths([photos], root / "db", IndexOptions(**OPTS))
    index = SegmentIndex.open(root / "db")
    with serving(index) as url:
        yield url, index
    index.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # bypass_csp: Playwright's own waits evaluate strings; the page itself runs under its CSP.
        context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        yield page
        browser.close()


TILES_LOADED = (
    "n => { const t = [...document.querySelectorAll('.tile img')]; "
    "return t.length >= n && t.slice(0, n).every(i => i.complete && i.naturalWidth > 0); }"
)
# Count the outline colour's pixels in the first tile as the browser decoded it.
OUTLINE_PIXELS = """() => {
  const img = document.querySelector('.tile img');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 255 && d[i + 2] === 0) n++;
  return n;
}"""


def test_type_a_query_see_tiles_with_overlays_and_open_one(server, page):
    url, index = server
    page.goto(url)
    page.wait_for_function("() => document.getElementById('index-info').textContent.includes('segments')")
    assert f"{index.index.ntotal} segments" in page.inner_text("#index-info")

    page.fill("#q", "a cup of coffee")
    page.press("#q", "Enter")
    page.wait_for_function(TILES_LOADED, arg=12)
    tiles = page.query_selector_all(".tile")
    expected = index.query("a cup of coffee", k=24)
    assert [int(t.get_attribute("data-segment-id")) for t in tiles] == [h.segment_id for h in expected]
    assert page.evaluate(OUTLINE_PIXELS) > 20, "the tile shows its mask outline"
    assert "q=a+cup+of+coffee" in page.url  # the search is in the URL: Back and links work
    page.screenshot(path=ARTIFACTS / "serve-1-search.png")

    first = expected[0]
    tiles[0].click()
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_function(
        "() => ['viewer-image', 'viewer-overlay'].every(id => { "
        "const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
    )
    image_size = page.evaluate(
        "() => [document.getElementById('viewer-image').naturalWidth, "
        "document.getElementById('viewer-image').naturalHeight]"
    )
    overlay_size = page.evaluate(
        "() => [document.getElementById('viewer-overlay').naturalWidth, "
        "document.getElementById('viewer-overlay').naturalHeight]"
    )
    assert image_size == overlay_size, "the mask layer lines up with the image"
    assert str(first.segment_id) in page.inner_text("#viewer-meta") and first.image in page.inner_text("#viewer-meta")
    others = page.query_selector_all("#image-segments img")
    assert len(others) == len(index.store.image_segment_ids(first.image_id))
    page.wait_for_timeout(300)  # let the strip's tiles paint for the screenshot
    page.screenshot(path=ARTIFACTS / "serve-2-viewer.png")

    # Another segment of the same image, then more like it.
    other = int(others[1].get_attribute("data-segment-id"))
    others[1].click()
    page.wait_for_function("id => document.getElementById('viewer-meta').textContent.includes(String(id))", arg=other)
    page.click("#more-like-this")
    page.wait_for_function("id => document.getElementById('status').textContent.includes('like #' + id)", arg=other)
    page.wait_for_function(TILES_LOADED, arg=12)
    shown = [int(t.get_attribute("data-segment-id")) for t in page.query_selector_all(".tile")]
    assert shown == [h.segment_id for h in index.similar(other, k=24)] and other not in shown
    page.screenshot(path=ARTIFACTS / "serve-3-more-like-this.png")
    assert page.errors == []


def test_filters_errors_and_names_shown_as_text(server, page):
    url, index = server
    page.goto("about:blank")  # a fresh document: no tiles left from the last test
    page.goto(f"{url}/#q=a+cup&per_image=true&k=12")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('for “a cup”')")
    page.wait_for_function(TILES_LOADED, arg=4)
    assert page.is_checked("#per-image") and page.input_value("#q") == "a cup"
    names = page.eval_on_selector_all(".tile .name", "els => els.map(e => e.textContent)")
    assert len(names) == 4 and len(set(names)) == 4  # one tile per image
    assert HOSTILE_NAME in names and page.query_selector("#injected") is None
    page.screenshot(path=ARTIFACTS / "serve-4-per-image.png")

    page.goto(f"{url}/#like=99999999")
    page.wait_for_selector("#status.error")
    assert "no segment with id 99999999" in page.inner_text("#status")
    assert page.query_selector_all(".tile") == []
    assert page.errors == []


def pick_region_photo(page, url: str, photo) -> None:
    """A 300x225 photo (its format by its suffix), chosen on a fresh page's region search."""
    from skimage import data

    Image.fromarray(data.chelsea()).resize((300, 225)).save(photo)
    page.goto("about:blank")
    page.goto(url)
    page.click("#region-search summary")
    page.set_input_files("#region-file", str(photo))


def test_the_time_said_is_the_wait_the_user_had(server, page):
    """ "in 33 ms" where the request took 0.23 s (9 s for a large upload): the page said the
    server's search time (``took_ms``) alone."""
    import re
    import time

    url, _ = server

    def slow(route):
        answer = route.fetch()
        time.sleep(0.6)  # a slow network, a busy server: what the user waits through
        route.fulfill(response=answer)

    page.route("**/api/search?*", slow)
    try:
        page.goto("about:blank")
        page.goto(f"{url}/#q=fur&k=4")
        page.wait_for_function("() => / in \\d+ ms/.test(document.getElementById('status').textContent)")
        said = int(re.search(r" in (\d+) ms", page.inner_text("#status")).group(1))
        assert said >= 600, page.inner_text("#status")
    finally:
        page.unroute("**/api/search?*")


def test_search_by_a_region_of_a_photo(server, page, tmp_path):
    """Pick a photo that is not in the index, click a point on it: SAM's region comes
    back drawn on the photo, and the results are segments like it."""
    url, index = server
    pick_region_photo(page, url, tmp_path / "holiday.png")
    page.wait_for_selector("#region-stage:not([hidden])")
    page.wait_for_function(
        "() => { const i = document.getElementById('region-photo'); return i.complete && i.naturalWidth === 300; }"
    )
    box = page.query_selector("#region-photo").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4)
    page.wait_for_function("() => document.getElementById('status').textContent.includes('like the region')")
    page.wait_for_function(TILES_LOADED, arg=6)
    assert page.evaluate("() => document.getElementById('region-photo').src.startsWith('data:image/png')")
    page.screenshot(path=ARTIFACTS / "serve-4-region.png")
    # Drag a box: a box prompt, the same flow.
    page.evaluate("() => { document.getElementById('status').textContent = ''; }")
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 120, box["y"] + 100, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.getElementById('status').textContent.includes('like the region')")
    assert page.errors == []


def test_a_hit_whose_photo_is_gone_is_a_grey_tile_saying_why(server, page):
    """A photo moved away since indexing: its tiles were broken images, unexplained (the
    API's 410 says why; the CLI's contact sheet draws grey "photo gone" tiles)."""
    url, index = server
    photo = next(Path(h.image) for h in index.query("x", k=50) if h.image.endswith("astronaut.png"))
    away = photo.with_name("away.bin")
    photo.rename(away)
    try:
        page.goto("about:blank")
        page.goto(f"{url}/#q=x&path=*astronaut*&k=12")
        page.wait_for_function("() => document.querySelectorAll('.tile .gone[title]').length >= 1")
        gone = page.query_selector(".tile .gone[title]")
        assert gone.inner_text() == "photo gone" and "can no longer be read" in gone.get_attribute("title")
        broken = "() => [...document.querySelectorAll('.tile img')].some(i => i.complete && i.naturalWidth === 0)"
        page.wait_for_function(f"() => !({broken})()")  # none left a broken image (lazy ones load when seen)
    finally:
        away.rename(photo)
    # A busy server's 503 is no photo lost: "not loaded", its reason in the title (review).
    page.route("**/tile.png*", lambda route: route.fulfill(status=503, body='{"detail": "busy"}'))
    try:
        page.goto("about:blank")
        page.goto(f"{url}/#q=x&path=*astronaut*&k=12")
        page.wait_for_function("() => document.querySelectorAll('.tile .gone[title]').length >= 1")
        tile = page.query_selector(".tile .gone[title]")
        assert tile.inner_text() == "not loaded" and tile.get_attribute("title") == "busy"
    finally:
        page.unroute("**/tile.png*")


def test_a_photo_the_browser_cannot_show_is_said_and_not_clicked(server, page, tmp_path):
    """A TIFF (which the server takes; chromium shows none): a broken image, and a click
    on it sent point -1,-1, answered "lies outside the 512x512 photo"."""
    url, _ = server
    pick_region_photo(page, url, tmp_path / "scan.tiff")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('cannot show scan.tiff')")
    said = page.inner_text("#status")
    box = page.query_selector("#region-photo").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_timeout(300)
    assert page.inner_text("#status") == said and "usesearch similar --image" in said  # no request, no -1,-1


def test_refine_with_sam3_toggle(server, page):
    """The filters' "Refine with SAM 3" toggle: the tiles are SAM 3's instances in the
    search's top photos (the seeded tiny SAM 3 for a tiny index), drawn inline."""
    pytest.importorskip("sam3", reason="the sam3 extra is not installed: pip install -e '.[sam3]'")
    from usesearch.indexer.refine import RefineOptions, Refiner

    url, index = server
    page.goto("about:blank")
    page.goto(url)
    page.click("#filters summary")
    page.check("#refine")
    page.fill("#refine-top", "2")
    page.select_option("#k", "12")
    page.fill("#q", "a cup of coffee")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('SAM 3 instances')")
    page.wait_for_function(TILES_LOADED, arg=1)
    expected = Refiner(index, RefineOptions(top=2)).query("a cup of coffee", k=12)
    tiles = page.query_selector_all(".tile")
    assert len(tiles) == len(expected) > 0
    assert all("refined" in (t.get_attribute("class") or "") for t in tiles)
    assert [int(t.get_attribute("data-segment-id")) for t in tiles] == [h.segment_id for h in expected]
    assert page.evaluate("() => document.querySelector('.tile img').src.startsWith('data:image/png')")
    assert page.evaluate(OUTLINE_PIXELS) > 20, "the tile shows SAM 3's mask outlined"
    assert "refine=sam3" in page.url and "refine_top=2" in page.url  # the toggle lives in the URL too
    assert "top 2 photos" in page.inner_text("#status")
    page.screenshot(path=ARTIFACTS / "serve-5-refine.png")
    page.goto("about:blank")
    page.goto(f"{url}/#q=a+cup+of+coffee&k=12")  # the toggle off again: stored segments
    page.wait_for_function(TILES_LOADED, arg=1)
    assert not page.query_selector_all(".tile.refined")
    assert not page.is_checked("#refine")
    assert page.errors == []
