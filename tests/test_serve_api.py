"""The web app's JSON API: same answers as the Python API, pictures that match the
masks, 410 for photos gone, live data (what a request may ask and its 4xx:
test_serve_requests.py; its guards: test_serve_security.py)."""

import io
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app as cli_app
from usesearch.errors import IndexMismatchError
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.indexer.search import MAX_QUERY_CHARS
from usesearch.indexer.web import MAX_K, create_app
from usesearch.tasks.visualize import OUTLINE, decode_mask


def png_array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_search_answers_as_the_python_api_does(served):
    _, index, client = served
    body = client.get("/api/search", params={"q": "a cat's face", "k": 7, "with_masks": True}).json()
    expected = index.query("a cat's face", k=7)
    assert [h["segment_id"] for h in body["hits"]] == [h.segment_id for h in expected]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected])
    assert body["segments_indexed"] == index.index.ntotal and body["query"] == "a cat's face"
    assert [h["rank"] for h in body["hits"]] == list(range(1, 8))
    assert body["hits"][0]["mask"] == expected[0].mask


def test_filters_and_more_like_this(served):
    _, index, client = served
    per_image = client.get("/api/search", params={"q": "fur", "k": 10, "per_image": True}).json()["hits"]
    assert len(per_image) == 3 and len({h["image_id"] for h in per_image}) == 3
    big = client.get("/api/search", params={"q": "fur", "k": 10, "min_area": 500}).json()["hits"]
    assert len(big) == 10 and all(h["area"] >= 500 for h in big)
    cats = client.get("/api/search", params={"q": "fur", "k": 5, "path": "*chelsea*"}).json()["hits"]
    assert len(cats) == 5 and all("chelsea" in h["image"] for h in cats)

    first = big[0]["segment_id"]
    like = client.get(f"/api/segments/{first}/similar", params={"k": 5}).json()
    assert like["like_segment"] == first and len(like["hits"]) == 5
    assert first not in [h["segment_id"] for h in like["hits"]]
    assert [h["segment_id"] for h in like["hits"]] == [h.segment_id for h in index.similar(first, k=5)]
    assert "notes" not in like or like["notes"] is None  # hits: nothing to explain


def test_segment_metadata_mask_tile_overlay_and_image(served):
    _, index, client = served
    hit = client.get("/api/search", params={"q": "a cup", "k": 1}).json()["hits"][0]
    meta = client.get(f"/api/segments/{hit['segment_id']}").json()
    rle_mask = decode_mask(meta["mask"])
    assert int(rle_mask.sum()) == meta["area"] == hit["area"]

    png_mask = png_array(client.get(meta["mask_url"]))
    assert png_mask.shape == rle_mask.shape and np.array_equal(png_mask == 255, rle_mask)

    tile_response = client.get(meta["tile_url"], params={"size": 128})
    assert "max-age" in tile_response.headers["cache-control"]  # segment ids are never reused
    tile = png_array(tile_response)
    assert max(tile.shape[:2]) == 128
    assert (tile[..., :3] == OUTLINE).all(-1).any(), "the tile shows the mask outline"

    image = client.get(meta["image_url"]).json()
    assert image["image_id"] == meta["image_id"] and (image["height"], image["width"]) == rle_mask.shape
    ids = [s["segment_id"] for s in image["segments"]]
    assert meta["segment_id"] in ids and len(ids) == len(index.store.image_segment_ids(meta["image_id"]))
    assert [s["area"] for s in image["segments"]] == sorted((s["area"] for s in image["segments"]), reverse=True)

    thumb = Image.open(io.BytesIO(client.get(image["thumbnail_url"], params={"size": 64}).content))
    overlay = png_array(client.get(f"/api/segments/{meta['segment_id']}/overlay.png", params={"size": 64}))
    assert max(thumb.size) == 64 and overlay.shape[:2] == (thumb.height, thumb.width) and overlay.shape[2] == 4
    # Transparent outside the mask, visible inside it.
    small = np.asarray(Image.fromarray(rle_mask).resize(thumb.size, Image.NEAREST))
    assert (overlay[..., 3][~small] == 0).all() and (overlay[..., 3][small] > 0).all()


def test_decoded_images_are_cached_within_a_byte_budget(served):
    from usesearch.indexer.web.render import ImageCache

    _, index, _ = served
    records = [index.store.image(i) for i in (1, 2, 3)]
    one = records[0].height * records[0].width * 3
    cache = ImageCache(max_bytes=2 * one)
    first = cache.rgb(records[0])
    assert cache.rgb(records[0]) is first  # decoded once
    cache.rgb(records[1]), cache.rgb(records[2])
    assert sum(a.nbytes for a in cache._images.values()) <= 2 * one and cache.rgb(records[0]) is not first


def test_page_assets_and_api_docs_are_served(served):
    _, _, client = served
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "Content-Security-Policy" in page.headers
    assert client.get("/app.js").status_code == 200 and client.get("/style.css").status_code == 200
    spec = client.get("/openapi.json").json()
    for route in (
        "/api/search",
        "/api/segments/{segment_id}/similar",
        "/api/segments/{segment_id}",
        "/api/segments/{segment_id}/mask.png",
        "/api/images/{image_id}/thumbnail.jpg",
    ):
        assert route in spec["paths"]
    # The errors as the server sends them: its 422's detail is one line (a list, said the
    # schema FastAPI made), and the other statuses a client meets are named.
    invalid = client.get("/api/search", params={"q": "cat", "k": 0})
    schema = spec["components"]["schemas"]["HTTPValidationError"]["properties"]
    assert isinstance(invalid.json()["detail"], str) and schema["detail"]["type"] == "string"
    assert set(invalid.json()) == set(schema) and isinstance(invalid.json()["errors"], list)
    paths = spec["paths"]
    assert "Retry-After" in paths["/api/search"]["get"]["responses"]["503"]["headers"]
    assert {"400", "404", "410"} <= set(paths["/api/segments/{segment_id}/tile.png"]["get"]["responses"])
    assert {"403", "413"} <= set(paths["/api/region-search"]["post"]["responses"])
    assert "401" not in paths["/api/search"]["get"]["responses"] and "securitySchemes" not in spec["components"]
    assert client.get("/api/nothing", params={"q": 1}).json() == {"detail": "Not Found"}  # the Error schema
    # A route's doc is its docstring: a name of the code in it ("at most ``MAX_UPLOAD_BYTES``") tells a client nothing.
    described = [op.get("description", "") for route in paths.values() for op in route.values()]
    assert described and not [d for d in described if re.search(r"\b[A-Z]{3,}_[A-Z_]+\b", d)]
    assert "at most 20 MiB" in paths["/api/region-search"]["post"]["description"]
    reference = client.get("/api")  # readable offline, unlike /docs's CDN-hosted Swagger UI
    assert reference.status_code == 200 and "GET /api/segments/{segment_id}/similar" in reference.text
    assert "max length 1000" in reference.text and "≤ 200" in reference.text
    info = client.get("/api/info").json()
    assert info["segments"] > 0 and info["limits"] == {"max_query_chars": MAX_QUERY_CHARS, "max_k": MAX_K}


def test_an_image_gone_from_disk_is_a_410_not_a_500(tmp_path):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    index = SegmentIndex.open(tmp_path / "db")
    client = TestClient(create_app(index), raise_server_exceptions=False)
    hit = client.get("/api/search", params={"q": "cup", "k": 1}).json()["hits"][0]
    thumbnail = f"/api/images/{hit['image_id']}/thumbnail.jpg"
    assert client.get(hit["tile_url"]).status_code == 200  # decoded and cached: later requests check the file
    import usesearch.indexer.web.render as render

    decodes = []
    real_decode = render.decode
    render.decode = lambda *a: decodes.append(a) or real_decode(*a)
    try:
        Image.new("RGB", (3000, 2000)).save(hit["image"])  # edited since indexing, and far bigger
        changed = client.get(hit["tile_url"])
        assert changed.status_code == 410 and "changed on disk" in changed.json()["detail"]
        assert decodes == []  # refused by its checksum: the pixel budget held was for the indexed photo
    finally:
        render.decode = real_decode
    shutil.rmtree(photos)
    gone = client.get(thumbnail)
    assert gone.status_code == 410 and "can no longer be read" in gone.json()["detail"]
    assert gone.json()["detail"].endswith(": No such file or directory") and "b'" not in gone.json()["detail"]
    assert client.get(hit["mask_url"]).status_code == 200  # masks live in the store


def test_embedding_files_gone_under_a_server_are_a_500_whose_reason_stays_in_its_log(tmp_path, caplog):
    """Was a 400, "Bad Request", naming the server's files and an admin's command."""
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    index = SegmentIndex.open(tmp_path / "db")
    client = TestClient(create_app(index), raise_server_exceptions=False)
    hit = client.get("/api/search", params={"q": "cup", "k": 1}).json()["hits"][0]
    shutil.rmtree(tmp_path / "db" / "embeddings")
    lost = client.get(f"/api/segments/{hit['segment_id']}/similar")
    assert lost.status_code == 500 and "damaged or missing" in lost.json()["detail"], lost.json()
    assert str(tmp_path) not in lost.json()["detail"] and "is missing" in caplog.text
    index.close()


def test_new_segments_from_a_running_indexer_are_served_without_restart(tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    index = SegmentIndex.open(tmp_path / "db")
    client = TestClient(create_app(index))
    before = client.get("/api/search", params={"q": "a cup", "k": 50}).json()
    write_photos(photos, ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))  # another process would do the same
    after = client.get("/api/search", params={"q": "a cup", "k": 50}).json()
    assert after["segments_indexed"] > before["segments_indexed"]
    assert any("coffee" in h["image"] for h in after["hits"]) and not any(
        "coffee" in h["image"] for h in before["hits"]
    )
    assert client.get("/api/info").json()["images_done"] == 2


def test_the_model_loads_once_and_must_match_the_index(served, monkeypatch):
    root, _, _ = served
    import usesearch.models.factory as factory  # (the index imports its loader where it loads)

    loads = []
    real = factory.load_model
    monkeypatch.setattr(factory, "load_model", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    index = SegmentIndex.open(root / "db")
    client = TestClient(create_app(index))
    assert len(loads) == 1  # at startup, not at the first query
    for text in ("a cat", "a cup", "a face"):
        assert client.get("/api/search", params={"q": text}).status_code == 200
    assert len(loads) == 1

    # ``real``, not ``usesearch.load_model``: the package would keep the patched loader
    # as its own name after this test.
    with pytest.raises(IndexMismatchError, match="built with"):
        create_app(SegmentIndex.open(root / "db", model=real("tiny", embedder="crop")))


def test_a_port_in_use_is_refused_in_one_line_before_the_index_opens(served, monkeypatch):
    """uvicorn said so in five log lines after the model had loaded, and exited 3 (the
    code of "every photo failed")."""
    import socket

    root, _, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(SegmentIndex, "open", lambda *a, **k: pytest.fail("the index was opened"))
        result = CliRunner().invoke(cli_app, ["serve", "--db", str(root / "db"), "--port", str(port)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "give another --port" in result.output


@pytest.mark.parametrize("background", [False, True])
def test_ctrl_c_stops_the_server_quietly_with_exit_130(served, background):
    """Ctrl-C twice, as an impatient user does: uvicorn's lifespan task logged a
    traceback of 40 lines. A server started where SIGINT is ignored (a shell's
    background job), stopped by one: uvicorn stopped, then exited 0."""
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from tests.helpers import run_python

    root, _, _ = served
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = "import sys; from usesearch.cli.app import main; sys.argv[0] = 'usesearch'; main()"
    args = ("serve", "--db", root / "db", "--port", port)
    ignored = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    server = run_python(code, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignored)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=cat&k=1", timeout=5).read()
            break
        except OSError:
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.5)
    server.send_signal(signal.SIGINT)
    time.sleep(0.3)
    if not background:
        server.send_signal(signal.SIGINT)
    said = server.communicate(timeout=60)[0]
    # 130, or ended by the second SIGINT itself (a shell reports 130 for both)
    assert (
        server.returncode in ((130,) if background else (130, -signal.SIGINT))
        and "Traceback" not in said
        and "200 OK" in said
    ), said
    assert f"running on http://127.0.0.1:{port}" in said  # the URL, said as the server starts
    assert said.index("loading its model ...") < said.index("running on")  # not silent while it loads


def test_one_decode_per_image_however_many_requests_wait_for_it(served, monkeypatch):
    import threading
    import time

    from usesearch.indexer.web import render

    _, index, _ = served
    records = [index.store.image(i) for i in (1, 2, 3)]
    cache = render.ImageCache(budget=render.PixelBudget(pixels=max(r.width * r.height for r in records)))
    running, peak, real_decode = [0], [0], cache._decode

    def slow_decode(record):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return real_decode(record)
        finally:
            running[0] -= 1

    monkeypatch.setattr(cache, "_decode", slow_decode)
    results = []
    threads = [
        threading.Thread(target=lambda r=records[i % 3]: results.append((r.id, cache.rgb(r)))) for i in range(24)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 24 and cache.decoded == 3 and peak[0] == 1
    for image_id, rgb in results:
        assert rgb is cache._images[(image_id, index.store.image(image_id).sha256)]


def test_a_served_photo_replaced_by_a_fifo_is_a_410_at_once(tmp_path):
    import os
    import threading

    photos = write_photos(tmp_path / "photos", ("astronaut",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS))
    index = SegmentIndex.open(tmp_path / "db")
    client = TestClient(create_app(index), raise_server_exceptions=False)
    target = next(photos.rglob("astronaut.png"))
    target.unlink()
    os.mkfifo(target)
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=client.get("/api/segments/1/tile.png")))
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and result["r"].status_code == 410 and "regular file" in result["r"].text
    index.close()
