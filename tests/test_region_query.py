"""Query by a region of any photo: a point or a box prompts SAM (its most stable
mask), or a mask is given; the region is embedded with the index's own model; uploads
to the web app share its pixel budget; text queries do not wait for SAM (the open
index's other refusals in Python: test_segment_index_api.py)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from usesearch.cli.app import app
from usesearch.errors import BadArgumentError, UsesearchError
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex, index_paths
from usesearch.masks import rle


def index_four_photos(root):
    """Four photos indexed under ``root``: ``root`` (the index is ``root / "db"``) and their folder."""
    photos = write_photos(root / "photos", ("astronaut", "chelsea", "coffee", "rocket"))
    index_paths([photos], root / "db", IndexOptions(**OPTS))
    return root, photos


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    return index_four_photos(tmp_path_factory.mktemp("region"))


def test_a_region_of_a_photo_outside_the_index_finds_its_indexed_twin_first(indexed, tmp_path):
    root, photos = indexed
    outside = tmp_path / "copy-of-chelsea.png"
    outside.write_bytes((photos / "sub" / "chelsea.png").read_bytes())  # not under the indexed folder
    ix = SegmentIndex.open(root / "db")
    twin = next(h for h in ix.query("a cat", k=50) if h.image.endswith("chelsea.png"))
    mask = rle.decode(twin.mask)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    result = CliRunner().invoke(
        app,
        [
            "similar",
            "--db",
            str(root / "db"),
            "--image",
            str(outside),
            "--mask",
            str(tmp_path / "mask.png"),
            "--json",
            "-k",
            "3",
            "--show",
            str(tmp_path / "hits.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    said = json.loads(result.stdout)  # the region too, as the web API gives it (only on stderr, as text)
    hits, region = said["hits"], said["region"]
    assert (region["bbox"], region["area"], region["stability_score"]) == (list(twin.bbox), twin.area, None)
    assert np.array_equal(rle.decode(region["mask"]), mask)
    assert hits[0]["segment_id"] == twin.segment_id and hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert f"region: bbox {list(twin.bbox)}, {twin.area} pixels (the mask given)" in result.stderr
    assert (tmp_path / "hits-region.png").is_file() and (tmp_path / "hits.png").is_file()
    api = ix.similar_region(np.asarray(Image.open(outside).convert("RGB")), mask=mask, k=3)
    assert [h.segment_id for h in api] == [h["segment_id"] for h in hits]
    by_path = ix.similar_region(outside, mask=tmp_path / "mask.png", k=3)  # the picture, as --mask takes it
    assert [h.segment_id for h in by_path] == [h["segment_id"] for h in hits]  # (a path was an IndexError)
    with pytest.raises(BadArgumentError, match="the mask is an array .H, W. or a mask picture's path"):
        ix.similar_region(outside, mask=[None, 1], k=3)
    # The same region drawn on a transparent layer (black, opaque inside): the opaque pixels
    # are the region (composited on white, the whole photo but it was searched).
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask, 3] = 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    args = ["similar", "--db", str(root / "db"), "--image", str(outside), "--mask", str(tmp_path / "layer.png")]
    drawn = CliRunner().invoke(app, [*args, "--json", "-k", "3"])
    assert f"region: bbox {list(twin.bbox)}, {twin.area} pixels (the mask given)" in drawn.stderr, drawn.output


def test_a_point_or_a_box_prompts_sam_for_its_most_stable_mask(indexed):
    root, photos = indexed
    ix = SegmentIndex.open(root / "db")
    rgb = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))
    by_point = ix.region(rgb, point=(40, 30))
    assert by_point.mask.shape == rgb.shape[:2] and by_point.area == int(by_point.mask.sum()) > 0
    assert by_point.stability_score is not None and by_point.bbox[2] > 0
    by_box = ix.region(rgb, box=(10, 10, 50, 40))
    assert by_box.area == int(by_box.mask.sum()) > 0
    hits = ix.similar_region(rgb, box=(10, 10, 50, 40), k=4, filters=SearchFilters(per_image=True))
    assert len(hits) == 4 and len({h.image_id for h in hits}) == 4
    result = CliRunner().invoke(
        app,
        ["similar", "--db", str(root / "db"), "--image", str(photos / "astronaut.png"), "--point", "40,30", "-k", "2"],
    )
    assert result.exit_code == 0 and "SAM, stability" in result.output, result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--point", "40"], "2 comma-separated numbers"),
        (["--point", "4000,3"], "outside"),
        (["--box", "1,2,0,5"], "must be positive"),
        ([], "one of --point"),
        (["--point", "4,4", "--box", "1,1,5,5"], "give exactly one of --point X,Y, --box X,Y,W,H or --mask MASK.png"),
        (["--point", "4,4", "--max-pixels", "0"], "'0': give a number of at least 1, or one with k, M or G"),
    ],
)
def test_bad_region_options_are_one_line_errors(indexed, args, message):
    root, photos = indexed
    result = CliRunner().invoke(
        app,
        ["similar", "--db", str(root / "db"), "--image", str(photos / "astronaut.png"), *args],
        env={"COLUMNS": "300"},
    )  # (wide: typer's box around a refused value wraps it)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_similar_needs_a_segment_or_a_photo(indexed, tmp_path):
    root, photos = indexed
    runner = CliRunner()
    assert "give a SEGMENT_ID" in runner.invoke(app, ["similar", "--db", str(root / "db")]).output
    both = ["similar", "5", "--db", str(root / "db"), "--image", str(photos / "astronaut.png"), "--point", "1,1"]
    assert "give a SEGMENT_ID or --image PHOTO, not both" in runner.invoke(app, both).output
    tiny_mask = tmp_path / "mask.png"
    Image.new("L", (20, 10), 255).save(tiny_mask)  # 20 wide, 10 high
    small = ["similar", "--db", str(root / "db"), "--image", str(photos / "astronaut.png"), "--mask", str(tiny_mask)]
    assert "the mask is 20x10 but the photo is" in runner.invoke(app, small).output  # width x height, as elsewhere
    (tmp_path / "bomb.png").write_bytes(b"not an image")
    result = runner.invoke(
        app, ["similar", "--db", str(root / "db"), "--image", str(tmp_path / "bomb.png"), "--point", "1,1"]
    )
    assert result.exit_code == 2 and "cannot read image" in result.output


def test_upload_route_searches_a_region_and_refuses_bad_uploads(indexed, monkeypatch):
    from fastapi.testclient import TestClient

    import usesearch.indexer.web.app as web
    from usesearch.indexer.web import create_app

    root, photos = indexed
    before = sorted(p.name for p in photos.rglob("*"))
    ix = SegmentIndex.open(root / "db")
    client = TestClient(create_app(ix, token="s3cret"))
    photo = (photos / "astronaut.png").read_bytes()
    auth = {"Authorization": "Bearer s3cret"}
    assert (
        client.post("/api/region-search?point=40,30", content=photo).status_code == 401
    )  # the same token as everything
    response = client.post("/api/region-search?point=40,30&k=3&per_image=true", content=photo, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        len(body["hits"]) == 3
        and body["region"]["area"] > 0
        and body["region"]["overlay"].startswith("data:image/png;base64,")
    )
    assert rle.area(body["region"]["mask"]) == body["region"]["area"]
    assert client.post("/api/region-search?point=40,30", content=b"", headers=auth).status_code == 400
    garbage = client.post("/api/region-search?point=40,30", content=b"not an image", headers=auth)
    # It read "cannot read image the uploaded photo: ...".
    assert garbage.status_code == 400 and garbage.json()["detail"] == (
        "cannot read image in the upload: not a recognised image format"
    ), garbage.json()
    assert client.post("/api/region-search?point=4000,30", content=photo, headers=auth).status_code == 400
    nothing = client.post("/api/region-search", content=photo, headers=auth)  # no point or box: said in API terms
    assert nothing.status_code == 400 and "point=X,Y" in nothing.json()["detail"], nothing.text
    form = client.post("/api/region-search?point=40,30", files={"file": ("a.png", photo)}, headers=auth)
    assert form.status_code == 400 and "raw request body" in form.json()["detail"]
    outside = client.post("/api/region-search?point=4000,30", content=photo, headers=auth).json()["detail"]
    assert outside.startswith("point 4000,30 lies outside") and "--" not in outside
    monkeypatch.setattr(web, "MAX_UPLOAD_BYTES", 1000)
    assert client.post("/api/region-search?point=40,30", content=photo, headers=auth).status_code == 413
    monkeypatch.setattr(web, "MAX_UPLOAD_BYTES", 20 * 2**20)
    import io

    bomb = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(bomb, "PNG")  # 400 MP: refused from its header, never decoded
    response = client.post("/api/region-search?point=1,1", content=bomb.getvalue(), headers=auth)
    assert response.status_code == 400 and "pixels" in response.json()["detail"]
    assert sorted(p.name for p in photos.rglob("*")) == before  # nothing written into the indexed folders


def test_region_uploads_share_one_pixel_budget_with_every_decode(indexed, monkeypatch):
    """Concurrent uploads wait for their pixels to fit (never over the budget), a
    full budget for the whole wait is a 503 with Retry-After, and a photo larger than
    the budget is refused outright."""
    import io
    import threading

    from fastapi.testclient import TestClient

    import usesearch.indexer.web.app as web
    from usesearch.indexer.web import create_app
    from usesearch.indexer.web.budget import PixelBudget

    root, _ = indexed
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)).save(big, "PNG")
    pixels = 600 * 800
    budgets = []
    monkeypatch.setattr(
        web, "PixelBudget", lambda: budgets.append(PixelBudget(pixels=2 * pixels, wait_s=60)) or budgets[-1]
    )
    client = TestClient(create_app(SegmentIndex.open(root / "db")))
    codes = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(
                client.post("/api/region-search?point=100,100&k=2", content=big.getvalue()).status_code
            )
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [200] * 6 and 0 < budgets[-1].peak <= 2 * pixels and budgets[-1].in_use == 0
    # A budget held elsewhere (a thumbnail's decode) for longer than the wait: 503, then it frees.
    monkeypatch.setattr(
        web, "PixelBudget", lambda: budgets.append(PixelBudget(pixels=pixels, wait_s=0.2)) or budgets[-1]
    )
    client = TestClient(create_app(SegmentIndex.open(root / "db")))
    with budgets[-1].hold(1):
        response = client.post("/api/region-search?point=100,100", content=big.getvalue())
    assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
    assert client.post("/api/region-search?point=100,100", content=big.getvalue()).status_code == 200
    monkeypatch.setattr(web, "PixelBudget", lambda: PixelBudget(pixels=pixels // 2))
    client = TestClient(create_app(SegmentIndex.open(root / "db")))
    response = client.post("/api/region-search?point=100,100", content=big.getvalue())
    assert response.status_code == 400 and "at most" in response.json()["detail"]


def test_a_point_and_a_box_reach_sam_scaled_once_to_its_input():
    """``SamPredictor.predict`` takes prompts in the photo's pixels and scales them to
    SAM's input itself; scaled before too, they landed at (S / long side)² of the place
    asked (a point at the middle of a 640-px photo went to SAM at a fifth of the way)."""
    from usesearch.masks import region
    from usesearch.masks.sam import build_sam

    sam = build_sam("tiny")  # its input is 256 px: a 640x512 photo is scaled by 0.4
    seen = {}
    encode = sam.prompt_encoder.forward

    def spy(points, boxes, masks):
        seen["points"] = None if points is None else points[0][0, 0].tolist()
        seen["boxes"] = None if boxes is None else boxes.reshape(-1).tolist()
        return encode(points, boxes, masks)

    sam.prompt_encoder.forward = spy
    rgb = np.random.default_rng(0).integers(0, 255, (512, 640, 3), dtype=np.uint8)
    for prompt, key, expected in (
        ({"point": (320.0, 256.0)}, "points", [128.0, 102.4]),
        ({"box": (100.0, 100.0, 200.0, 200.0)}, "boxes", [40.0, 40.0, 120.0, 120.0]),
        ({"box": (-100.0, -50.0, 300.0, 700.0)}, "boxes", [0.0, 0.0, 80.0, 204.8]),  # past the edges: the part within
    ):
        try:
            region.prompt(sam, rgb, **prompt)
        except UsesearchError:
            pass  # random weights may find no region; what reached SAM is the point
        assert seen[key] == pytest.approx(expected, abs=0.2), prompt  # (its rounding of 512 * 0.4: 205 rows)


def test_a_text_query_does_not_wait_for_a_region_search_holding_sam(indexed, monkeypatch):
    """A served index: one big upload's region search holds SAM for tens of seconds;
    text queries meanwhile go through the text tower (or its cache) at once."""
    import threading

    from usesearch.masks import region as region_lib

    root, photos = indexed
    ix = SegmentIndex.open(root / "db")
    expected = [h.segment_id for h in ix.query("a cat", k=3)]
    in_sam, release = threading.Event(), threading.Event()
    prompt = region_lib.prompt

    def slow_prompt(*args, **kwargs):
        in_sam.set()
        release.wait(30)
        return prompt(*args, **kwargs)

    monkeypatch.setattr(region_lib, "prompt", slow_prompt)
    rgb = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))
    searching = threading.Thread(target=ix.similar_region, args=(rgb,), kwargs={"point": (40.0, 40.0), "k": 3})
    searching.start()
    try:
        assert in_sam.wait(30)
        answered = []
        texts = threading.Thread(target=lambda: answered.extend([ix.query("a cat", k=3), ix.query("a rocket", k=3)]))
        texts.start()
        texts.join(20)
        assert not texts.is_alive() and len(answered) == 2, "a text query waited for SAM"
        assert [h.segment_id for h in answered[0]] == expected and searching.is_alive()  # SAM still held
    finally:
        release.set()
        searching.join(60)


def test_a_text_query_and_a_region_search_arriving_first_together_load_the_model_once(indexed, monkeypatch):
    """Each side asks for the model under its own lock: a library caller's first two
    searches, one of each, loaded it twice (twice the memory, on a GPU perhaps too much)."""
    import threading
    import time

    from usesearch.models import factory  # (the index imports its loader where it loads)

    root, photos = indexed
    ix = SegmentIndex.open(root / "db")
    loads, real_load = [], factory.load_model

    def slow_load(*args, **kwargs):
        loads.append(threading.current_thread().name)
        time.sleep(0.5)  # both threads inside before either has a model
        return real_load(*args, **kwargs)

    monkeypatch.setattr(factory, "load_model", slow_load)
    rgb = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))
    threads = [
        threading.Thread(target=ix.query, args=("a cat",), name="text"),
        threading.Thread(target=ix.similar_region, args=(rgb,), kwargs={"point": (40.0, 40.0)}, name="region"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(loads) == 1, loads


def test_a_hits_score_is_a_cosine_whatever_the_rows_rounding():
    """`similar --mask` of a stored segment's own mask scored 1.000059 (its float16 row's
    rounding), while --min-score takes -1 to 1."""
    from usesearch.indexer.hits import Hit
    from usesearch.indexer.records import SegmentRow

    row = SegmentRow(1, 1, "a.png", b"a.png", (4, 4), (0, 0, 2, 2), 4, "04", 0.9, 0.9)
    assert [Hit.from_row(row, 0, score).score for score in (1.000059, -1.00002, 0.5)] == [1.0, -1.0, 0.5]
