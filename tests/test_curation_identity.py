"""A curated folder's identity, caches and writers: another SAM, grounder or mask
setting refused on it, a torn cache or a shard the disk lacks named, one writer at a
time, a run cut short left unfinished, and a local model folder or a user's SAM
checkpoint one identity however it is named (the sources' faults: test_curation_faults.py)."""

import json

import pytest
import torch

import usesearch
from tests.helpers import curated_segment
from usesearch.curation.cache import StageCache
from usesearch.curation.dataset import DatasetWriter, read_records
from usesearch.curation.masks import BoxMaskConfig
from usesearch.curation.pipeline import curate
from usesearch.curation.records import BoxText, ImageItem, TextRef
from usesearch.errors import CurationConfigError


class CountingGrounder:
    def __init__(self, identity):
        self.identity, self.calls = identity, 0

    def __call__(self, rgb, caption):
        self.calls += 1
        return [BoxText((0, 0, rgb.shape[1], rgb.shape[0]), [TextRef("a cat", caption.source, "phrase")])]


def test_other_mask_settings_on_a_curated_folder_are_refused(tmp_path, photos):
    cat = ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])
    curate([cat], tmp_path / "ds", mask_config=BoxMaskConfig())
    with pytest.raises(CurationConfigError, match="pred_iou_thresh 0.6 \\(now 0.8\\)"):
        curate([], tmp_path / "ds", mask_config=BoxMaskConfig(pred_iou_thresh=0.8))
    # A source with given masks runs no SAM: it joins whatever SAM settings the folder has, both ways round.
    cup = ImageItem(path=str(photos / "cup.png"), segments=[curated_segment((100, 150), "a cup")])
    assert curate([cup], tmp_path / "ds", mask_config=None, source="given").done == 1
    curate([cup], tmp_path / "other", mask_config=None, source="given")
    assert curate([cat], tmp_path / "other", mask_config=BoxMaskConfig(pred_iou_thresh=0.8)).done == 1

    def cut_after_one():
        yield ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an unfinished curation keeps its settings too
        curate(cut_after_one(), tmp_path / "cut", mask_config=BoxMaskConfig(pred_iou_thresh=0.5))
    with pytest.raises(CurationConfigError, match="pred_iou_thresh 0.5 \\(now 0.6\\)"):
        curate([], tmp_path / "cut", mask_config=BoxMaskConfig())
    # With no predictor (SAM cannot run) the Python API records no SAM settings by default.
    curate([cup], tmp_path / "api", source="given")
    assert "mask_config" not in json.loads((tmp_path / "api" / "manifest.json").read_text())


def test_cached_boxes_are_reused_for_the_same_grounder_and_another_grounder_is_refused(tmp_path, photos):
    """A dataset's boxes come from one grounder: another one's would be mixed in silently
    beside the photos already done (as another SAM's masks, or captioner's texts)."""
    item = ImageItem(path=str(photos / "cat.png"), captions=[TextRef("A cat.", "gt_caption", "caption")])
    first, same, other = (CountingGrounder(i) for i in ("dino-a|box=0.05", "dino-a|box=0.05", "dino-a|box=0.3"))
    for n, grounder in enumerate((first, same)):
        curate([item], tmp_path / "ds", object(), grounder=grounder, source="s")  # whole-photo boxes: no SAM call
        (tmp_path / "ds" / "shards").rename(tmp_path / f"shards-{n}")  # as if killed before its record
    with pytest.raises(CurationConfigError, match=r"grounder dino-a\|box=0.05 \(now dino-a\|box=0.3\)"):
        curate([item], tmp_path / "ds", object(), grounder=other, source="s")
    assert (first.calls, same.calls, other.calls) == (1, 0, 0)  # the same identity reused the cache


def test_a_dataset_refuses_another_sam_and_a_manifest_that_is_not_its_own(tmp_path, photos):
    item = ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])
    curate([item], tmp_path / "ds", object(), sam="sam vit_b sha256:aaaa", source="one")
    curate([item], tmp_path / "ds", source="two")  # given masks: no SAM ran, nothing to compare
    with pytest.raises(CurationConfigError, match="sam sam vit_b sha256:aaaa \\(now sam vit_b sha256:bbbb\\)"):
        curate([item], tmp_path / "ds", object(), sam="sam vit_b sha256:bbbb", source="three")
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["models"] == {"sam": "sam vit_b sha256:aaaa"}
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    with pytest.raises(usesearch.UsesearchError, match="is not a curated dataset's manifest"):
        curate([item], tmp_path / "web")
    assert json.loads((tmp_path / "web" / "manifest.json").read_text()) == {"name": "my web app", "icons": []}


def test_a_shard_the_manifest_lists_and_the_disk_lacks_is_refused(tmp_path, photos):
    item = ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])
    curate([item], tmp_path / "ds", source="one")
    curate([item], tmp_path / "ds", source="two")
    (tmp_path / "ds" / "shards" / "shard-00000.jsonl").unlink()
    with pytest.raises(usesearch.UsesearchError, match="shard shard-00000.jsonl is missing: restore it"):
        list(read_records(tmp_path / "ds"))


def test_a_torn_cache_line_does_not_swallow_the_next_entry(tmp_path):
    path = tmp_path / "boxes.jsonl"
    cache = StageCache(path)
    cache.put("a", 1)
    with open(path, "a") as f:
        f.write('{"key": "b", "val')  # killed mid-write
    reopened = StageCache(path)
    reopened.put("c", 3)
    assert (StageCache(path).get("a"), StageCache(path).get("c")) == (1, 3)


def test_one_writer_a_folder_and_new_shards_after_the_highest(tmp_path):
    writer = DatasetWriter(tmp_path)
    with pytest.raises(usesearch.UsesearchError, match="another curate run .* is writing to"):
        DatasetWriter(tmp_path)
    writer.write("a.png", "0" * 64, (4, 4), [], 0)
    writer.close()
    (tmp_path / "shards" / "shard-00000.jsonl").rename(tmp_path / "shards" / "shard-00003.jsonl")
    later = DatasetWriter(tmp_path)
    later.write("b.png", "1" * 64, (4, 4), [], 0)
    later.close()
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert shards == ["shard-00003.jsonl", "shard-00004.jsonl"]
    assert (tmp_path / "shards" / "shard-00003.jsonl").read_text().count("\n") == 1


def test_another_runs_end_does_not_finish_a_run_cut_short(tmp_path, photos):
    """Folder run cut short, then a whole run of another source: the dataset passed as
    finished, the first run's photos silently missing."""
    cat = ImageItem(path=str(photos / "cat.png"), segments=[curated_segment((75, 113), "a cat")])

    def cut_after_one():
        yield cat
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # by a version that spelled --input-format --source
        curate(cut_after_one(), tmp_path / "ds", source="folder", run="--source folder /photos")
    curate([cat], tmp_path / "ds", source="coco-instances", run="--input-format coco-instances /inst.json")
    # (the second run wrote the manifest again, its runs in today's spelling)
    with pytest.raises(usesearch.UsesearchError, match=r"cut short: --input-format folder /photos\)"):
        list(read_records(tmp_path / "ds"))
    curate([cat], tmp_path / "ds", source="folder", run="--input-format folder /photos")  # that run again: it ends
    assert len(list(read_records(tmp_path / "ds"))) == 2


def test_a_local_model_folder_is_one_identity_however_it_is_typed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from usesearch.curation.pretrained import PretrainedStage

    folder = tmp_path / "gd"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"x" * 10)

    def identity(name):
        model = torch.nn.Linear(1, 1)
        model.config = SimpleNamespace(_name_or_path=name)
        return PretrainedStage(model, None).model_identity()

    monkeypatch.chdir(tmp_path)
    assert identity("gd") == identity(str(folder)) == identity("gd/") == identity("./gd")
    before = identity("gd")
    (folder / "config.json").write_text('{"a": 2}')  # another model saved under the same name
    assert identity("gd") != before


def test_a_sam_checkpoint_of_the_users_is_hashed_once_per_content(tmp_path, monkeypatch):
    from usesearch.models import weights

    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "mine.pth"
    checkpoint.write_bytes(b"weights")
    first = weights.remembered_sha256(checkpoint)
    monkeypatch.setattr(weights, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert weights.remembered_sha256(checkpoint) == first
    assert list(tmp_path.iterdir()) != [] and not (tmp_path / "mine.pth.sha256").exists()  # nothing beside it
    monkeypatch.undo()
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path / "home"))
    checkpoint.write_bytes(b"other weights")
    assert weights.remembered_sha256(checkpoint) != first
