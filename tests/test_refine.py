"""``query --refine sam3``: SAM 3 (the seeded tiny model, built from the sam3 package's
own classes) segments the query's phrase in the top photos of a USE search."""

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from usesearch.cli.app import app
from usesearch.errors import MissingWeightsError, UsesearchError
from usesearch.indexer.filters import SearchFilters
from usesearch.indexer.refine import RefinedHit, RefineOptions, Refiner
from usesearch.io.images import read_image
from usesearch.masks import rle

pytest.importorskip("sam3", reason="the sam3 extra is not installed: pip install -e '.[sam3]'")

from usesearch.masks import sam3 as sam3_lib  # noqa: E402
from usesearch.masks import sam3_weights  # noqa: E402

runner = CliRunner()


def counting_image_steps(refiner: Refiner, monkeypatch) -> list[int]:
    """Counts the SAM 3 image steps (one per photo not found in a cache) of the
    refiner's model, for this test."""
    calls: list[int] = []
    encode = refiner.sam3.encode_images

    def counted(rgbs):
        calls.extend(rgb.shape[0] for rgb in rgbs)
        return encode(rgbs)

    monkeypatch.setattr(refiner.sam3, "encode_images", counted)
    return calls


def test_tiny_sam3_is_seeded_and_finite():
    a, b = sam3_lib.load_sam3("tiny", device="cpu"), sam3_lib.load_sam3("tiny", device="cpu")
    first, second = a.model.state_dict(), b.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)  # no weight left to uninitialised memory
    encoder = a.model.backbone.language_backbone.encoder
    assert torch.isfinite(encoder.positional_embedding).all() and torch.isfinite(encoder.text_projection).all()
    assert sum(p.numel() for p in a.model.parameters()) < 5_000_000


def test_refined_masks_decode_to_the_photos_size(refiner):
    hits = refiner.query("a cat", k=30)
    assert hits and all(isinstance(h, RefinedHit) for h in hits)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.photo_rank for h in hits} <= {1, 2, 3}
    for hit in hits:
        photo = read_image(hit.image)
        mask = rle.decode(hit.mask)
        assert mask.shape == photo.shape[:2]
        assert mask.sum() == hit.area > 0
        x, y, w, h = hit.bbox
        assert 0 <= x and x + w <= photo.shape[1] and 0 <= y and y + h <= photo.shape[0]
    # Filters as a dict of their fields, as SegmentIndex takes them (replace() of a dict failed)
    as_dict = refiner.query("a cat", k=30, filters={"min_area": 0})
    assert [(h.image, h.bbox) for h in as_dict] == [(h.image, h.bbox) for h in hits]


def test_use_score_is_the_best_overlapping_stored_segments(index, refiner):
    hit = refiner.query("a rocket", k=1)[0]
    ids = index.store.image_segment_ids(hit.image_id)
    rows = index.store.rows(ids)
    stored = [{"size": list(rows[i].image_hw), "counts": rows[i].rle_counts} for i in ids]
    ious = rle.iou_between([hit.mask], stored)[0]
    assert ids[int(ious.argmax())] == hit.segment_id and hit.overlap == pytest.approx(ious.max())
    vector = index.model.embed_text(["a rocket"])[0]
    (_, embedding), *_ = list(index.store.embeddings([hit.segment_id]))
    assert hit.use_score == pytest.approx(float(embedding[0] @ vector), abs=1e-5)


def test_a_second_phrase_reuses_the_image_step(index, refiner, monkeypatch):
    fresh = Refiner(index, RefineOptions(top=3), sam3=refiner.sam3)
    steps = counting_image_steps(fresh, monkeypatch)
    fresh.query("a cat", k=5)
    assert len(steps) == 3 and fresh.last.image_steps == 3
    fresh.query("a rocket", k=5)
    assert len(steps) == 3 and fresh.last.cached == 3  # the phrase step only

    uncached = Refiner(index, RefineOptions(top=3, memory_bytes=0), sam3=refiner.sam3)
    uncached.query("a cat", k=5)
    uncached.query("a rocket", k=5)
    assert len(steps) == 3 + 6  # nothing kept: every query runs the image step again


def test_the_disk_cache_carries_the_image_step_to_a_new_process(db, index, refiner, monkeypatch):
    on_disk = RefineOptions(top=2, disk_bytes=1 << 30)
    writer = Refiner(index, on_disk, sam3=refiner.sam3)
    before = writer.query("a cat", k=10)
    writer.close()  # waits for the files
    files = list((db / "sam3-cache").rglob("*.safetensors"))
    assert len(files) == 2

    reader = Refiner(index, on_disk, sam3=refiner.sam3)
    steps = counting_image_steps(reader, monkeypatch)
    after = reader.query("a cat", k=10)
    assert steps == [] and reader.last.cached == 2
    assert [(h.image, h.score, h.mask) for h in after] == [(h.image, h.score, h.mask) for h in before]
    files[0].write_bytes(b"torn")  # a damaged file is recomputed, not fatal
    again = Refiner(index, on_disk, sam3=refiner.sam3)
    again.query("a cat", k=10)
    assert len(steps) == 1
    again.close()
    # A whole safetensors file of another layout (another usesearch's, a stray one) ended
    # every refined query in an IndexError, for good: it is recomputed as a torn one is.
    from safetensors.torch import save_file

    save_file({"level0": torch.zeros(1, 2)}, str(files[1]))
    foreign = Refiner(index, on_disk, sam3=refiner.sam3)
    assert [(h.image, h.score) for h in foreign.query("a cat", k=10)] == [(h.image, h.score) for h in before]
    assert len(steps) == 2
    foreign.close()
    reader.close()


def test_filters_apply_to_refined_hits(refiner):
    per_image = refiner.query("a cat", k=10, filters=SearchFilters(per_image=True))
    assert len({h.image_id for h in per_image}) == len(per_image) >= 2
    big = refiner.query("a cat", k=50, filters=SearchFilters(min_area=3000))
    assert big and all(h.area >= 3000 for h in big)
    distinct = refiner.query("a cat", k=50, filters=SearchFilters(distinct=True))
    everything = refiner.query("a cat", k=50)
    assert len(distinct) < len(everything)


def test_missing_extra_is_one_line(monkeypatch, index):
    monkeypatch.setitem(__import__("sys").modules, "sam3.model.sam3_image", None)
    with pytest.raises(UsesearchError, match=r"pip install -e '\.\[sam3\]'") as caught:
        Refiner(index)
    assert "\n" not in str(caught.value)


def test_an_extra_that_fails_to_import_says_why(monkeypatch, index):
    """An ImportError naming no module (the package refusing a numpy version) was said
    as "None is missing"."""
    import builtins

    real = builtins.__import__

    def refusing(name, *args, **kwargs):
        if name == "sam3.model.sam3_image":
            raise ImportError("numpy>=2.4 is not supported by this version")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "sam3.model.sam3_image", raising=False)
    monkeypatch.setattr(builtins, "__import__", refusing)
    with pytest.raises(UsesearchError, match=r"\(it failed to import: numpy>=2.4 is not supported by this version\)"):
        Refiner(index)


def test_every_sam3_model_names_its_checkpoint_in_the_light_table():
    """Its checkpoint is in ``sam3_weights`` (read by `models list` without torch), its
    architecture in ``sam3``: the two tables name the same models."""
    assert sam3_lib.SAM3_MODELS.keys() == sam3_weights.SAM3_CHECKPOINTS.keys()


def test_missing_weights_are_one_line(monkeypatch, tmp_path, index):
    monkeypatch.setenv("USESEARCH_HOME", str(tmp_path))
    monkeypatch.setattr(sam3_weights, "_hub_cached", lambda *a: None)
    with pytest.raises(MissingWeightsError, match="usesearch models pull sam3") as caught:
        Refiner(index, RefineOptions(model="sam3"))
    assert "\n" not in str(caught.value) and str(tmp_path / "sam3.pt") in str(caught.value)


def test_checkpoints_load_with_weights_only(tmp_path):
    tiny = sam3_lib.load_sam3("tiny", device="cpu")
    state = {f"detector.{k}": v + 1 for k, v in tiny.model.state_dict().items() if v.is_floating_point()}
    state.update({f"detector.{k}": v for k, v in tiny.model.state_dict().items() if not v.is_floating_point()})
    path = tmp_path / "sam3-tiny.pt"
    torch.save({"model": state}, path)
    loaded = sam3_lib.load_sam3("tiny", checkpoint=path, device="cpu")
    for key, value in loaded.model.state_dict().items():  # every one the file's (its init is not drawn)
        assert torch.equal(value, state[f"detector.{key}"]), key
    assert loaded.identity != tiny.identity
    before = path.stat()  # a fine-tuned checkpoint copied over it with `cp -p`: same size, same mtime
    torch.save({"model": {k: v * 2 if v.is_floating_point() else v for k, v in state.items()}}, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert sam3_lib.load_sam3("tiny", checkpoint=path, device="cpu").identity != loaded.identity  # its own cache

    torch.save({"model": {k: v for k, v in list(state.items())[1:]}}, path)  # one weight short
    with pytest.raises(UsesearchError, match="not a SAM 3 image checkpoint"):
        sam3_lib.load_sam3("tiny", checkpoint=path, device="cpu")
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UsesearchError, match="is not a SAM 3 checkpoint"):
        sam3_lib.load_sam3("tiny", checkpoint=path, device="cpu")


def test_cli_refine_json_show_and_coco(db, tmp_path):
    from pycocotools.coco import COCO

    sheet, coco = tmp_path / "sheet.png", tmp_path / "hits.json"
    args = ["query", "a cat", "--db", str(db), "--refine", "sam3", "--refine-top", "2", "-k", "4"]
    result = runner.invoke(app, [*args, "--json", "--show", str(sheet), "--export-coco", str(coco)])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout[: result.stdout.rindex("]") + 1])
    assert len(hits) == 4 and all(h["refined_by"] == "sam3" and "use_score" in h for h in hits)
    assert rle.decode(hits[0]["mask"]).shape == tuple(hits[0]["mask"]["size"])
    assert sheet.stat().st_size > 0
    loaded = COCO(str(coco))
    assert len(loaded.getAnnIds()) == 4
    assert np.array_equal(loaded.annToMask(loaded.anns[1]), rle.decode(hits[0]["mask"]))

    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "SAM 3 instances in the top 2 photos" in table.output


def test_a_refined_search_that_chose_no_photo_says_why_as_a_plain_one_does(db):
    # --min-score left no photo for SAM 3: the title alone said "0 SAM 3 instances in the top 0 photos".
    args = ["query", "a cat", "--db", str(db), "--min-score", "0.99"]
    plain, refined = (runner.invoke(app, [*args, *more]) for more in ((), ("--refine", "sam3")))
    assert plain.exit_code == refined.exit_code == 0, refined.output
    why = [line for line in refined.stderr.splitlines() if "--min-score 0.99" in line]
    assert why and why == [line for line in plain.stderr.splitlines() if "--min-score 0.99" in line]
    assert why[0].startswith("no hit scores at least --min-score 0.99 (the best found without it scores ")


def test_cli_refine_errors_are_one_line(db, monkeypatch):
    wrong = runner.invoke(app, ["query", "a cat", "--db", str(db), "--refine", "sam9"])
    assert wrong.exit_code == 2 and "choose sam3" in wrong.output
    alone = runner.invoke(app, ["query", "a cat", "--db", str(db), "--refine-top", "3"])
    assert alone.exit_code == 2 and "--refine-top goes with --refine sam3" in alone.output
    monkeypatch.setitem(__import__("sys").modules, "sam3.model.sam3_image", None)
    missing = runner.invoke(app, ["query", "a cat", "--db", str(db), "--refine", "sam3"])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1
    assert "pip install -e '.[sam3]'" in missing.output


def test_photos_batched_through_sam3_get_what_each_gets_alone(index, refiner):
    alone = Refiner(index, RefineOptions(top=3, batch=1), sam3=refiner.sam3)
    batched = Refiner(index, RefineOptions(top=3, batch=3), sam3=refiner.sam3)
    one, many = alone.query("a cat", k=40), batched.query("a cat", k=40)
    assert alone.last.image_steps == batched.last.image_steps == 3  # both ran the image step
    assert len(one) == len(many) == 40
    assert [h.score for h in many] == pytest.approx([h.score for h in one], abs=1e-5)
    same = [rle.iou_between([a.mask], [b.mask])[0, 0] for a, b in zip(one, many)]
    assert min(same) > 0.99


def test_a_photo_changed_since_indexing_is_skipped_and_said(index, refiner):
    from pathlib import Path

    from PIL import Image

    fresh = Refiner(index, RefineOptions(top=3), sam3=refiner.sam3)  # its features cached by the first query
    first = fresh.query("a cat", k=40)
    changed = Path(first[0].image)
    original = changed.read_bytes()
    try:
        Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
        hits = fresh.query("a cat", k=40)
    finally:
        changed.write_bytes(original)
    assert len(fresh.last.skipped) == 1 and "changed on disk" in fresh.last.skipped[0]
    assert fresh.last.cached == 2  # the other two from the cache; the changed one's not used
    # The fourth photo takes its place: SAM 3 looks at the 3 photos --refine-top asks for (2 before).
    assert (fresh.last.photos, fresh.last.refined, fresh.last.image_steps) == (4, 3, 1)
    fourth = {h.image for h in index.search_vector(index.text_vector("a cat"), 4, SearchFilters(per_image=True))}
    assert hits and str(changed) not in {h.image for h in hits}
    assert {h.image for h in hits} <= fourth - {str(changed)} and len(fourth) == 4
    assert {h.image for h in hits} - {h.image for h in first}  # (the new photo's instances among them)
    moved = changed.with_name("elsewhere.png")  # gone: said in words, not as Python's error with a bytes path
    changed.rename(moved)
    try:
        fresh.query("a cat", k=40)
    finally:
        moved.rename(changed)
    assert fresh.last.skipped == [
        f"{changed}: no longer on disk (`usesearch prune --db {index.db_dir}` drops it from the index)"
    ]


def test_min_area_is_for_the_refined_instances_not_for_choosing_the_photos(index, refiner):
    """A photo whose stored segments are all small may hold a large SAM 3 instance."""
    largest = max(r.area for r in index.store.rows(index.store.segment_ids()).values())
    hits = refiner.query("a cat", k=40, filters=SearchFilters(min_area=largest + 1))
    assert refiner.last.photos == 3 and all(h.area > largest for h in hits)


def test_a_cache_folder_that_cannot_be_written_costs_the_answer_nothing(tmp_path, monkeypatch):
    """A read-only folder (no touch, no unlink) and a full disk (safetensors raises its
    own error, not an OSError): the features come back, or are simply not kept."""
    import safetensors

    from usesearch.indexer import refine_cache

    key = "ab" * 32
    features = [torch.ones(1, 2, 3, 3), torch.zeros(1, 4, 2, 2)]  # [1, C, H, W] levels, as SAM 3 gives them
    cache = refine_cache.ImageStateCache(0, tmp_path / "cache", 1 << 20)
    cache.put(key, features)
    cache.flush()

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(refine_cache.os, "utime", refused)
    monkeypatch.setattr(refine_cache.Path, "unlink", refused)
    loaded = cache.get(key, torch.device("cpu"))
    assert loaded is not None and torch.equal(loaded[0], features[0])

    def disk_full(*args, **kwargs):
        raise safetensors.SafetensorError("File too large")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    cache.put("cd" * 32, features)
    cache.close()  # the writer's error is not the query's
    assert cache.get("cd" * 32, torch.device("cpu")) is None


def test_only_one_batch_of_image_features_is_held_at_a_time(index, refiner, monkeypatch):
    """The features of the top photos are segmented a batch at a time, not gathered
    first: with nothing cached, one batch's features are alive when SAM 3 segments,
    and none when the next batch is encoded (at --refine-top 200 on a GPU, all at
    once would take 11-22 GB)."""
    import weakref

    uncached = Refiner(index, RefineOptions(top=3, batch=1, memory_bytes=0), sam3=refiner.sam3)
    made: list[weakref.ref] = []
    alive_when_encoding: list[int] = []
    alive_when_segmenting: list[int] = []
    encode, segment = refiner.sam3.encode_images, refiner.sam3.segment_many

    def encoding(rgbs):
        alive_when_encoding.append(sum(ref() is not None for ref in made))  # the last batch's: gone by now
        features = encode(rgbs)
        made.extend(weakref.ref(f[0]) for f in features)
        return features

    def segmenting(*args, **kwargs):
        alive_when_segmenting.append(sum(ref() is not None for ref in made))
        return segment(*args, **kwargs)

    monkeypatch.setattr(refiner.sam3, "encode_images", encoding)
    monkeypatch.setattr(refiner.sam3, "segment_many", segmenting)
    hits = uncached.query("a cat", k=40)
    assert len(made) == 3 and uncached.last.image_steps == 3
    assert alive_when_encoding == [0, 0, 0] and alive_when_segmenting == [1, 1, 1]
    assert len(hits) == 40


def test_a_sam3_file_holding_other_than_weights_is_one_line(tmp_path):
    from usesearch.errors import UsesearchError
    from usesearch.masks.sam3 import load_checkpoint

    path = tmp_path / "sam3.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UsesearchError, match="sam3.pt is not a SAM 3 checkpoint: it holds a list"):
        load_checkpoint(torch.nn.Linear(1, 1), path)


def test_a_sam3_checkpoint_of_another_shape_is_one_line(tmp_path):
    from usesearch.masks.sam3 import load_checkpoint

    path = tmp_path / "sam3.pt"
    torch.save({"detector.weight": torch.zeros(3, 3), "detector.bias": torch.zeros(3)}, path)
    with pytest.raises(UsesearchError, match=r"weight is \(3, 3\), the model's \(2, 2\)"):
        load_checkpoint(torch.nn.Linear(2, 2), path)


def test_the_disk_bound_covers_every_model_identitys_folder(tmp_path):
    """Another device or re-pulled weights is another identity folder: the bound counts
    them all, oldest first out (before, each folder was bounded alone, for good)."""
    import os

    from usesearch.indexer import refine_cache

    root = tmp_path / refine_cache.CACHE_FOLDER
    (root / "cpu-old").mkdir(parents=True)
    left = root / "cpu-old" / f"{'ab' * 32}.safetensors"
    left.write_bytes(b"\0" * 600_000)
    os.utime(left, (1, 1))  # long unused
    cache = refine_cache.ImageStateCache(0, root / "cuda-new", 1_000_000, bound_over=root)
    cache.put("cd" * 32, [torch.zeros(128 * 1024)])  # 512 KiB: with the old file, past the bound
    cache.close()
    assert not left.exists() and (root / "cuda-new" / f"{'cd' * 32}.safetensors").is_file()


def test_a_killed_writes_temporary_file_is_counted_then_swept(tmp_path):
    """A query killed mid-write left ``.KEY.safetensors.PID.tmp`` (100 MB with the real
    model): never removed, and outside the 4 GiB bound. It counts toward the bound, and
    goes once older than a write takes; one under way is counted, never cut short."""
    import os

    from usesearch.indexer import refine_cache

    root = tmp_path / refine_cache.CACHE_FOLDER
    (root / "cpu").mkdir(parents=True)
    stale, current = (
        root / "cpu" / f".{'ab' * 32}.safetensors.41.tmp",
        root / "cpu" / f".{'ef' * 32}.safetensors.42.tmp",
    )
    stale.write_bytes(b"\0" * 600_000)
    current.write_bytes(b"\0" * 600_000)
    os.utime(stale, (1, 1))  # left long ago
    cache = refine_cache.ImageStateCache(0, root / "cpu", 1_000_000, bound_over=root)
    cache.put("cd" * 32, [torch.zeros(64 * 1024)])  # 256 KiB
    cache.put("12" * 32, [torch.zeros(64 * 1024)])  # with the current write's 600 KB: past the bound
    cache.close()
    assert not stale.exists() and current.exists()
    assert not (root / "cpu" / f"{'cd' * 32}.safetensors").exists()  # the oldest entry went for the bound
    assert (root / "cpu" / f"{'12' * 32}.safetensors").is_file()


def test_full_size_masks_made_a_few_at_a_time_equal_all_at_once():
    import torch.nn.functional as F

    logits = torch.randn(20, 1, 32, 48, generator=torch.Generator().manual_seed(0))[:, 0] * 4
    at_once = F.interpolate(logits[:, None], (150, 230), mode="bilinear", align_corners=False).sigmoid()[:, 0] > 0.5
    assert torch.equal(sam3_lib.full_size_masks(logits, (150, 230), chunk=8), at_once)
    assert sam3_lib.full_size_masks(logits[:0], (150, 230)).shape == (0, 150, 230)
