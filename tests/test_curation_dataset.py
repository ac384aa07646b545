"""A curated dataset read back: a damaged shard line or record named by file and line,
a torn last line skipped, a damaged manifest refused, a folder being curated said so,
and failures.jsonl listing only what is still wrong."""

import json

import pytest

import usesearch
from tests.helpers import curated_segment
from tests.test_curation_faults import _failures
from usesearch.curation.masks import BoxMaskConfig
from usesearch.curation.pipeline import curate
from usesearch.curation.records import ImageItem


def test_a_damaged_dataset_is_named_by_file_and_line_and_a_torn_last_line_is_not(tmp_path, photos):
    """A damaged line inside a shard, or a record lacking what readers need, stops the
    reader with its file and line (it was skipped, or a KeyError); a torn last line
    (a kill mid-write) is skipped; a damaged manifest is refused, never read as
    "no settings" that any re-run would pass."""
    from usesearch.curation.dataset import stats

    items = [ImageItem(path=str(photos / n), segments=[curated_segment((75, 113), "a cat")]) for n in ("cat.png",)]
    items.append(ImageItem(path=str(photos / "cup.png"), segments=[curated_segment((100, 150), "a cup")]))
    curate(items, tmp_path / "ds", mask_config=BoxMaskConfig())
    [shard] = (tmp_path / "ds" / "shards").glob("*.jsonl")
    whole = shard.read_text()
    first, second = whole.splitlines(keepends=True)
    shard.write_text(first + second[:40])  # torn last line: skipped
    assert stats(tmp_path / "ds")["images"] == 1
    for damaged, said in (
        (first[:60] + "\n" + second, "line 1 is damaged (not JSON)"),
        ("{}\n" + second, "line 1 is damaged (no path, sha256, segments)"),
        (first.replace('"texts"', '"textz"') + second, "line 1 is damaged (segment 0 lacks rle, bbox, area or texts)"),
        (first.replace("a cat", "a c\udcc3(t") + second, "line 1 is damaged (not UTF-8)"),
        (first.replace('"counts": "', '"counts": "~'), "line 1 is damaged (segment 0's mask is not a COCO RLE"),
    ):
        shard.write_bytes(damaged.encode("utf-8", "surrogateescape"))
        with pytest.raises(
            usesearch.UsesearchError, match=f"{shard.name} {said}".replace("(", "\\(").replace(")", "\\)")
        ):
            stats(tmp_path / "ds")
    shard.write_text(whole)
    manifest = tmp_path / "ds" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    for reader in (lambda: stats(tmp_path / "ds"), lambda: curate([], tmp_path / "ds", mask_config=BoxMaskConfig(0.1))):
        with pytest.raises(usesearch.UsesearchError, match="manifest.json is damaged .*delete it and run the same"):
            reader()


def test_a_dataset_being_curated_is_said_to_be_so(tmp_path, photos):
    import subprocess
    import sys
    import time

    from usesearch.curation.dataset import LOCK_FILE, stats

    curate([ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])], tmp_path / "ds")
    json_path = tmp_path / "ds" / "manifest.json"
    json_path.write_text(json_path.read_text().replace('"finished": true', '"finished": false'))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'a'); fcntl.flock(f, fcntl.LOCK_EX);"
            " open(sys.argv[1],'w').write('4242'); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "ds" / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(usesearch.UsesearchError, match="is being curated now .*pid 4242"):
            stats(tmp_path / "ds")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with pytest.raises(usesearch.UsesearchError, match="is an unfinished curation"):
        stats(tmp_path / "ds")


def test_a_photo_curated_after_it_failed_leaves_failures_jsonl(tmp_path, photos):
    """failures.jsonl lists what is still wrong: a photo fixed and curated by a later run
    loses its line; a fault in the source's annotations stays (the source still has it)."""
    good = (photos / "cat.png").read_bytes()
    (photos / "cat.png").write_bytes(good[:200])  # cut short
    item = ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])
    assert curate([item], tmp_path / "ds").failed == 1
    failures = tmp_path / "ds" / "failures.jsonl"
    with open(failures, "a") as f:  # a source fault recorded for the same photo
        f.write(json.dumps({"path": str(photos / "cat.png"), "annotation": 7, "error": "bad"}) + "\n")
    (photos / "cat.png").write_bytes(good)
    assert curate([item], tmp_path / "ds").done == 1
    assert [entry.get("annotation") for entry in _failures(tmp_path / "ds")] == [7]


def test_a_photo_replaced_and_curated_again_trains_on_its_current_content(tmp_path, photos):
    """The folder keeps the old record beside the new: stats counts the photo once, and
    training takes the record of what the file holds now (the trainer would otherwise
    skip the path as changed, its new record with it), also once the file is put back."""
    from PIL import Image

    from usesearch.curation.dataset import stats
    from usesearch.io.files import read_bytes
    from usesearch.training.data import load_image, load_samples

    cat = photos / "cat.png"
    item = lambda text: ImageItem(path=str(cat), segments=[curated_segment((75, 113), text)])  # noqa: E731
    cup = ImageItem(path=str(photos / "cup.png"), segments=[curated_segment((100, 150), "a cup")])
    curate([item("a cat"), cup], tmp_path / "ds", mask_config=BoxMaskConfig())
    original = cat.read_bytes()
    Image.open(cat).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(cat)  # replaced in place, same size
    curate([item("a flipped cat"), cup], tmp_path / "ds", mask_config=BoxMaskConfig())
    assert stats(tmp_path / "ds")["images"] == 2
    for content, text in ((cat.read_bytes(), "a flipped cat"), (original, "a cat")):
        cat.write_bytes(content)
        samples = {s.path: s for s in load_samples([tmp_path / "ds"])}
        assert len(samples) == 2 and samples[str(cat)].texts == [[text]]
        assert samples[str(cat)].sha256 == read_bytes(str(cat))[1]
        assert all(load_image(s)[0].size for s in samples.values())  # none refused as changed


def test_a_dataset_folder_that_does_not_exist_is_said_so(tmp_path):
    """`train /data/typo` said "is not a curated dataset (no manifest.json)", sending the
    user to look inside a folder that is not there."""
    from usesearch.curation.dataset import require_dataset
    from usesearch.errors import UsesearchError

    with pytest.raises(UsesearchError, match=r"typo does not exist: give a curated dataset's folder"):
        require_dataset(tmp_path / "typo")
    with pytest.raises(UsesearchError, match=r"is not a curated dataset \(no manifest.json\)"):
        require_dataset(tmp_path)
