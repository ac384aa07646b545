"""``query --refine sam3`` served by the web app: the API's refined answers, a server busy with
refined searches, a client that left before SAM 3 ran, and SAM 3's decodes drawn from the
server's pixel budget."""

import numpy as np
import pytest

from tests.helpers import OPTS, write_photos
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.indexer.filters import SearchFilters
from usesearch.indexer.refine import RefineOptions, Refiner
from usesearch.masks import rle

pytest.importorskip("sam3", reason="the sam3 extra is not installed: pip install -e '.[sam3]'")


def test_the_api_refines_on_request(index, monkeypatch):
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from usesearch.indexer.web import create_app

    client = TestClient(create_app(index))
    answer = client.get("/api/search", params={"q": "a cat", "refine": "sam3", "refine_top": 2, "k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["refined_photos"] == 2 and len(body["hits"]) == 3
    for hit in body["hits"]:
        assert hit["refined_by"] == "sam3" and hit["tile_url"].startswith("data:image/png;base64,")
        assert 0 <= hit["overlap"] <= 1 and hit["photo_rank"] in (1, 2)  # as `query --refine sam3 --json` has them
        assert rle.decode(hit["mask"]).sum() == hit["area"]
        assert hit["mask_url"].startswith("data:image/png;base64,")  # its own, not a stored segment's
        mask = np.array(Image.open(io.BytesIO(base64.b64decode(hit["mask_url"].split(",", 1)[1]))))
        assert np.array_equal(mask == 255, rle.decode(hit["mask"]))
    plain = client.get("/api/search", params={"q": "a cat", "k": 3}).json()
    assert (
        all(h["refined_by"] is None and h["overlap"] is None for h in plain["hits"]) and plain["refined_photos"] is None
    )
    assert client.get("/api/search", params={"q": "a cat", "refine": "sam9"}).status_code == 422
    assert client.get("/api/search", params={"q": "a cat", "refine": "sam3", "refine_top": 0}).status_code == 422

    from pathlib import Path

    top = Path(plain["hits"][0]["image"])  # changed since indexing: skipped, and the answer says so
    original = top.read_bytes()
    try:
        Image.open(top).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(top)
        # The same server: the photo's SAM 3 features are cached, its file changed all the same.
        fresh = client.get("/api/search", params={"q": "a cat", "refine": "sam3", "k": 3})
    finally:
        top.write_bytes(original)
    skipped = fresh.json()["skipped"]
    assert fresh.status_code == 200 and len(skipped) == 1 and "changed on disk" in skipped[0], fresh.text
    assert fresh.json()["refined_photos"] == 3  # of the index's 4: the skipped one not counted
    assert str(top) not in {h["image"] for h in fresh.json()["hits"]}
    assert body["skipped"] == [] and plain["skipped"] is None

    monkeypatch.setitem(__import__("sys").modules, "sam3.model.sam3_image", None)
    missing = TestClient(create_app(index)).get("/api/search", params={"q": "a cat", "refine": "sam3"})
    # The request is sound; this server lacks what answers it (it was a 400, the client's fault).
    assert missing.status_code == 501 and "pip install -e '.[sam3]'" in missing.json()["detail"]


def test_refined_web_searches_past_the_few_that_can_wait_are_told_the_server_is_busy(index):
    """Each refined request waited for SAM 3 in one of the server's worker threads, with no
    bound: 42 of them (their clients long gone) left none for a plain search. Two at a
    time run or wait; more get the 503 a busy server gives (with Retry-After)."""
    import threading

    from usesearch.errors import ServerBusyError
    from usesearch.indexer.web import refined as refined_lib

    release, started = threading.Event(), []

    class SlowRefiner:
        def search(self, text, k, filters, top, gone=None):
            started.append(text)
            release.wait(10)
            raise RuntimeError("released")  # (the answer is beside the point)

    search = refined_lib.RefinedSearch(index, images=None)
    search._refiner = SlowRefiner()
    waiting = [
        threading.Thread(target=lambda: pytest.raises(RuntimeError, search.search, "a cat", 3, SearchFilters(), 2))
        for _ in range(refined_lib.REFINED_AT_ONCE)
    ]
    for thread in waiting:
        thread.start()
    for _ in range(1000):  # every slot taken (bounded: a thread that failed must not hang the suite)
        if len(started) == refined_lib.REFINED_AT_ONCE:
            break
        threading.Event().wait(0.01)
    assert len(started) == refined_lib.REFINED_AT_ONCE, started
    with pytest.raises(ServerBusyError, match="refined searches are running or waiting"):
        search.search("a dog", 3, SearchFilters(), 2)
    release.set()
    for thread in waiting:
        thread.join(10)
    assert started == ["a cat"] * refined_lib.REFINED_AT_ONCE  # the third never ran
    with pytest.raises(RuntimeError):  # slots given back
        search.search("a dog", 3, SearchFilters(), 2)


def test_a_refined_search_stops_before_its_next_sam3_batch_once_its_client_has_gone(index, refiner, monkeypatch):
    """A refined search runs for minutes on a CPU; a web client that left still had
    every batch computed for an answer no one would read."""
    from usesearch.errors import ClientGoneError

    uncached = Refiner(index, RefineOptions(top=3, batch=1, memory_bytes=0), sam3=refiner.sam3)
    encoded: list[int] = []
    encode = refiner.sam3.encode_images
    monkeypatch.setattr(refiner.sam3, "encode_images", lambda rgbs: encoded.append(len(rgbs)) or encode(rgbs))
    asked: list[int] = []

    def gone() -> bool:
        asked.append(len(encoded))
        return len(encoded) >= 1  # the client leaves during the first batch

    with pytest.raises(ClientGoneError, match="the client went away; stopped before photo 2 of 3"):
        uncached.search("a cat", 10, gone=gone)
    assert encoded == [1] and asked == [0, 1]
    hits, report = uncached.search("a cat", 10, gone=lambda: False)  # a client that stays gets its answer
    assert hits and report.image_steps == 3


def test_a_refined_web_search_whose_client_has_left_runs_no_sam3_batch(index, monkeypatch):
    """Through the app as a server runs it: the route asks the connection between
    batches; a client already gone costs no SAM 3 batch and gets the access log's 499."""
    import asyncio

    from usesearch.indexer.web import create_app

    app = create_app(index)
    encoded: list[int] = []
    monkeypatch.setattr("usesearch.masks.sam3.Sam3Model.encode_images", lambda self, rgbs: encoded.append(1))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/search",
        "raw_path": b"/api/search",
        "query_string": b"q=a+cat&refine=sam3&refine_top=2&k=3",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}  # the client has left

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 120))
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 499 and b"the client went away" in body, (start, body)
    assert encoded == []


def test_a_refined_web_search_draws_sam3s_decodes_from_the_servers_pixel_budget(tmp_path, monkeypatch):
    """SAM 3 decoded every top photo outside the budget thumbnails and tiles share, and a
    photo past the budget then made the whole refined answer a 400, its work thrown away."""
    from fastapi.testclient import TestClient

    import usesearch.indexer.web.app as web
    from usesearch.indexer.web import create_app
    from usesearch.indexer.web.budget import PixelBudget

    index_paths([write_photos(tmp_path / "photos")], tmp_path / "db", IndexOptions(**OPTS))
    budgets: list[PixelBudget] = []
    monkeypatch.setattr(web, "PixelBudget", lambda: budgets.append(PixelBudget(pixels=8000, wait_s=0.2)) or budgets[-1])
    with SegmentIndex.open(tmp_path / "db") as opened:
        client = TestClient(create_app(opened))
        answer = client.get("/api/search", params={"q": "a cat", "refine": "sam3", "refine_top": 4, "k": 5})
    assert answer.status_code == 200, answer.text
    assert budgets[0].peak > 0 and budgets[0].in_use == 0  # SAM 3's decodes held it, and gave it back
    assert any("decodes at most 8000" in said for said in answer.json()["skipped"]), answer.json()["skipped"]
