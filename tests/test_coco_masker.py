"""``--masker coco``: masks a user brings as a COCO file. Every entry's masks reach its
photo (however the entry names it, however many entries name it), a broken id is one
line, and an index is tied to the file's content: the same masks under another name
go on, other masks are refused rather than silently left as they were."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from usesearch.errors import CocoFileError, IndexMismatchError
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.masks import rle
from usesearch.masks.maskers import CocoMasker

H, W = 20, 30


def box(top, left, bottom, right):
    mask = np.zeros((H, W), bool)
    mask[top:bottom, left:right] = True
    return rle.encode(mask)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for shade, name in enumerate(("a.png", "b.png")):
        Image.new("RGB", (W, H), (90, 90, 90 + shade)).save(folder / name)  # each its own content
    return folder


def masks_file(path, images, annotations):
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def options(masks):
    return IndexOptions(preset="tiny", masker="coco", masker_options={"masks_json": str(masks)})


def test_every_entry_naming_a_photo_gives_it_its_masks(tmp_path):
    """ "./a.png" found no photo, and a second entry for a.png replaced the first's masks."""
    images = [{"id": 1, "file_name": "./a.png"}, {"id": 2, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"}]
    anns = [
        {"id": 1, "image_id": 1, "segmentation": box(0, 0, 5, 5)},
        {"id": 2, "image_id": 1, "segmentation": box(5, 5, 10, 10)},
        {"id": 3, "image_id": 2, "segmentation": box(10, 10, 20, 20)},
    ]
    masker = CocoMasker(masks_file(tmp_path / "m.json", images, anns))
    rgb = np.zeros((H, W, 3), np.uint8)
    assert len(masker(rgb, "/photos/a.png")) == 3
    assert masker(rgb, "/photos/b.png") == []


@pytest.mark.parametrize("image_id", [[1], {"id": 1}, None, True])
def test_an_image_id_that_is_no_id_is_one_line(tmp_path, image_id):
    masks = masks_file(
        tmp_path / "m.json",
        [{"id": 1, "file_name": "a.png"}],
        [{"image_id": image_id, "segmentation": box(0, 0, 5, 5)}],
    )
    with pytest.raises(CocoFileError, match=r"m.json: annotation #0's image_id is "):
        CocoMasker(masks)


def test_an_index_takes_its_masks_file_renamed_and_refuses_it_changed(photos, tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    anns = [
        {"id": 1, "image_id": 1, "segmentation": box(0, 0, 5, 5)},
        {"id": 2, "image_id": 2, "segmentation": box(5, 5, 10, 10)},
    ]
    first = masks_file(tmp_path / "masks.json", images, anns)
    db = tmp_path / "db"
    assert index_paths([photos], db, options(first)).segments == 2
    moved = tmp_path / "elsewhere" / "masks-v1.json"
    moved.parent.mkdir()
    shutil.move(first, moved)
    again = index_paths([photos], db, options(moved))  # the same masks: refused before, as another masker
    assert (again.done, again.skipped) == (0, 2)
    masks_file(moved, images, anns[:1])  # one mask fewer: the index would keep both, unsaid
    with pytest.raises(IndexMismatchError, match="its masks file's content changed"):
        index_paths([photos], db, options(moved))


def test_an_index_made_before_the_files_content_was_recorded_records_it(photos, tmp_path):
    import sqlite3

    images, anns = [{"id": 1, "file_name": "a.png"}], [{"id": 1, "image_id": 1, "segmentation": box(0, 0, 5, 5)}]
    masks = masks_file(tmp_path / "masks.json", images, anns)
    db = tmp_path / "db"
    index_paths([photos], db, options(masks))
    with sqlite3.connect(db / "segments.sqlite") as con:  # as an older version recorded it: the path alone
        con.execute("update index_info set masker_params = ?", (json.dumps({"masks_json": str(masks.resolve())}),))
    assert index_paths([photos], db, options(masks)).skipped == 2
    with SegmentIndex.open(db) as ix:
        assert "masks_sha256" in ix.info.masker_params


def test_a_run_naming_no_masker_adds_with_the_index_own_masks_file(photos, tmp_path):
    """Other maskers' indexes were run again with their own masker; a coco one got the
    default masker and was refused with "its masks file's content changed", untrue."""
    from PIL import Image

    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"}]
    anns = [{"id": i, "image_id": i, "segmentation": box(0, 0, 5 + i, 5 + i)} for i in (1, 2, 3)]
    masks, db = masks_file(tmp_path / "masks.json", images, anns), tmp_path / "db"
    index_paths([photos], db, options(masks))
    Image.new("RGB", (W, H), (10, 200, 10)).save(photos / "c.png")  # a new photo, its mask in the file
    again = index_paths([photos], db, IndexOptions(preset="tiny"))
    assert (again.done, again.skipped, again.segments) == (1, 2, 1)
    with pytest.raises(IndexMismatchError) as refused:  # another masker named: refused, not as a changed file
        index_paths([photos], db, IndexOptions(preset="tiny", masker="felzenszwalb"))
    assert "content changed" not in str(refused.value) and "asks for felzenszwalb. Use" in str(refused.value)
    assert "{" not in str(refused.value)  # said as flags are, not as a Python dict


def test_a_file_with_no_mask_is_refused_and_masks_of_no_entry_are_said(photos, tmp_path, caplog):
    """An empty masks file made an empty index and exited 0; masks naming an image id
    the file has no entry for were dropped without a word."""
    empty = masks_file(tmp_path / "empty.json", [{"id": 1, "file_name": "a.png"}], [])
    with pytest.raises(CocoFileError, match="empty.json: no mask names an image entry of the file: nothing to index"):
        index_paths([photos], tmp_path / "db", options(empty))
    assert not (tmp_path / "db").exists()
    anns = [
        {"id": 1, "image_id": 1, "segmentation": box(0, 0, 5, 5)},
        {"id": 2, "image_id": 7, "segmentation": box(5, 5, 10, 10)},
        {"id": 3, "image_id": 7, "segmentation": box(0, 0, 10, 10)},
    ]
    orphans = masks_file(tmp_path / "orphans.json", [{"id": 1, "file_name": "a.png"}], anns)
    with caplog.at_level("WARNING"):
        assert index_paths([photos], tmp_path / "db", options(orphans)).segments == 1
    assert (
        "orphans.json: 2 mask(s) name image ids the file has no entry for (e.g. 7): they are not indexed" in caplog.text
    )
