"""A labelled dataset indexed on Ray (``index IMAGES --coco FILE.json --ray``), locally
with two CPU workers: the index equals a sequential run's (annotations, masks,
embeddings, problems), and a re-run on Ray brings it up to a changed file as a
sequential re-run does: a relabel in place, a redrawn mask embedded again, a removed
annotation gone, nothing else embedded."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("ray", reason="the distributed extra is not installed: pip install -e '.[distributed]'")

from tests.helpers import write_photos  # noqa: E402
from tests.test_coco_index import write_coco  # noqa: E402
from usesearch.cli.app import app  # noqa: E402
from usesearch.indexer import IndexOptions, SegmentIndex  # noqa: E402
from usesearch.indexer.coco_index import index_coco  # noqa: E402
from usesearch.indexer.coco_ray import index_coco_ray  # noqa: E402
from usesearch.indexer.fragments import FRAGMENTS  # noqa: E402
from usesearch.masks import rle  # noqa: E402

TINY = IndexOptions(preset="tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Photos and a COCO file with clean annotations and one of each fault the photo
    decides: a broken polygon, a photo missing, an entry whose size is wrong."""
    root = tmp_path_factory.mktemp("coco-ray")
    photos = write_photos(root / "photos")
    coco_file = write_coco(root / "train.json", photos, ["sub/chelsea.png", "sub/rocket.png", "coffee.png"], 1)
    coco = json.loads(coco_file.read_text())
    w, h = Image.open(photos / "astronaut.png").size
    coco["images"] += [
        {"id": 10, "file_name": "astronaut.png", "height": h, "width": w + 5},  # the wrong size
        {"id": 11, "file_name": "gone.png", "height": 8, "width": 8},
    ]
    coco["annotations"] += [
        {"id": 40, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3]]},  # too few coordinates
        {"id": 41, "image_id": 10, "category_id": 2, "segmentation": [[1, 1, 9, 1, 9, 9]]},
        {"id": 42, "image_id": 11, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5]]},
    ]
    coco_file.write_text(json.dumps(coco))
    return photos, coco_file


def annotations(db) -> dict:
    """annotation id -> (class, crowd, split, photo, mask counts, embedding)."""
    ix = SegmentIndex.open(db)
    rows = ix.store.rows(ix.store.segment_ids())
    vectors = {int(i): v for ids, vecs in ix.store.embeddings(list(rows)) for i, v in zip(ids, vecs)}
    ix.close()
    return {
        r.annotation_id: (r.category, r.iscrowd, r.split, r.image_path.rsplit("/", 1)[1], r.rle_counts, vectors[r.id])
        for r in rows.values()
    }


def assert_same(db, reference):
    mine, theirs = annotations(db), annotations(reference)
    assert sorted(mine) == sorted(theirs) and mine
    for key in mine:
        assert mine[key][:5] == theirs[key][:5], key
        np.testing.assert_allclose(mine[key][5], theirs[key][5], atol=2e-3)


def test_a_labelled_dataset_on_ray_equals_a_sequential_run_also_after_photos_change(ray_local, world, tmp_path):
    """Then, as a sequential re-run does: a photo whose pixels changed is embedded again,
    one damaged since the last run is recorded as failed, and a fragment a killed run
    left is dropped."""
    photos, coco = world
    photos = Path(shutil.copytree(photos, tmp_path / "photos"))
    sequential = index_coco([photos], coco, tmp_path / "seq", TINY, split="train")
    on_ray = index_coco_ray([photos], coco, tmp_path / "ray", TINY, split="train")
    assert_same(tmp_path / "ray", tmp_path / "seq")
    assert (on_ray.done, on_ray.segments, on_ray.failed) == (sequential.done, sequential.segments, 0) == (3, 6, 0), (
        on_ray.failures
    )
    assert sorted(on_ray.problems) == sorted(sequential.problems) and len(on_ray.problems) == 3
    assert {line.split(": ")[1] for line in on_ray.problems} == {"broken mask", "size mismatch", "photo missing"}
    assert not list((tmp_path / "ray" / FRAGMENTS).glob("*.npz"))  # each fragment gone once committed
    again = index_coco_ray([photos], coco, tmp_path / "ray", TINY, split="train")
    assert (again.segments, again.done, again.skipped) == (0, 0, 3)  # nothing embedded twice

    rocket = photos / "sub" / "rocket.png"
    Image.open(rocket).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(rocket)  # same size, other pixels
    (photos / "coffee.png").write_bytes((photos / "coffee.png").read_bytes()[:200])  # damaged
    left = tmp_path / "ray" / FRAGMENTS / "coco-0123456789ab-1-0123456789abcdef.npz"
    left.parent.mkdir(exist_ok=True)
    left.write_bytes(b"a killed run's")
    sequential = index_coco([photos], coco, tmp_path / "seq", TINY, split="train")
    on_ray = index_coco_ray([photos], coco, tmp_path / "ray", TINY, split="train")
    assert not left.exists()
    assert_same(tmp_path / "ray", tmp_path / "seq")
    assert [p for p, _ in on_ray.failures] == [p for p, _ in sequential.failures] == [str(photos / "coffee.png")]
    assert (on_ray.segments, on_ray.done) == (sequential.segments, sequential.done) == (2, 1)  # the rocket's two
    assert on_ray.on_failed == sequential.on_failed == 0  # indexed before, kept with its annotations


def test_a_rerun_on_ray_follows_a_changed_file_as_a_sequential_rerun(ray_local, world, tmp_path):
    photos, coco_file = world
    changed = tmp_path / "train.json"  # the file changes in place (another file would share the split)
    shutil.copy(coco_file, changed)
    index_coco([photos], changed, tmp_path / "seq", TINY, split="train")
    shutil.copytree(tmp_path / "seq", tmp_path / "ray")
    coco = json.loads(coco_file.read_text())
    by_id = {a["id"]: a for a in coco["annotations"]}
    by_id[1]["category_id"] = 3  # relabelled
    h, w = by_id[3]["segmentation"]["size"]
    redrawn = np.zeros((h, w), bool)
    redrawn[2:20, 5:30] = True
    by_id[3]["segmentation"] = rle.encode(redrawn)  # a new mask: embedded again
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] != 5]  # gone from the file
    changed.write_text(json.dumps(coco))
    sequential = index_coco([photos], changed, tmp_path / "seq", TINY, split="train")
    args = ["index", str(photos), "--db", str(tmp_path / "ray"), "--coco", str(changed), "--split", "train"]
    result = CliRunner().invoke(app, [*args, "--preset", "tiny", "--ray", "local"])  # Ray as this process has it
    assert result.exit_code == 0, result.output
    assert_same(tmp_path / "ray", tmp_path / "seq")
    assert (sequential.relabelled, sequential.segments, sequential.removed, sequential.done) == (1, 1, 1, 3)
    assert sequential.redrawn == 1
    assert "models on Ray's CPU workers" in result.output and annotations(tmp_path / "ray")[1][0] == "cup"
    assert (
        "split 'train': 3 photos updated (1 annotation indexed, 1 relabelled, 1 redrawn, 1 removed)" in result.output
    ), result.output[-900:]


def test_a_rerun_on_ray_reads_only_the_photos_that_changed_or_gained_a_mask(ray_local, tmp_path, monkeypatch):
    """As ``index_coco`` re-runs: each photo was hashed again on every re-run on Ray (30
    min of reads at 10^6 photos), and Ray's commits kept no stat, so a sequential run
    after one read them all too. Now a photo is read only where its file changed, or a
    new mask needs its pixels; a repaired photo loses its failure; the index is a fresh
    sequential run's."""
    import ray.data

    from usesearch.indexer import known_images

    monkeypatch.setattr(known_images, "RACY_NS", 0)  # the photos were written just now: their stats kept all the same
    photos = write_photos(tmp_path / "photos", ("chelsea", "coffee", "rocket"))
    coco = write_coco(tmp_path / "val.json", photos, ["chelsea.png", "sub/coffee.png", "rocket.png"], 1)
    db = tmp_path / "db"
    assert index_coco_ray([photos], coco, db, TINY).done == 3
    sent, from_items = [], ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda rows: sent.extend(rows) or from_items(rows))

    def hashed_and_decoded() -> tuple[list[str], list[str]]:
        names = [(Path(r["path"]).name, "sha256" in r) for r in sent]
        sent.clear()
        return sorted(n for n, job in names if not job), sorted(n for n, job in names if job)

    again = index_coco_ray([photos], coco, db, TINY)
    assert hashed_and_decoded() == ([], []) and (again.skipped, again.done) == (3, 0)
    Image.open(photos / "rocket.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "rocket.png")
    data = json.loads(coco.read_text())
    h, w = (data["images"][0][k] for k in ("height", "width"))
    redrawn = np.zeros((h, w), bool)
    redrawn[5:9, 5:9] = True
    data["annotations"][0]["segmentation"] = rle.encode(redrawn)  # chelsea's first mask is new: its pixels are needed
    coco.write_text(json.dumps(data))
    changed = index_coco_ray([photos], coco, db, TINY)
    assert hashed_and_decoded() == (["rocket.png"], ["chelsea.png", "rocket.png"])
    assert (changed.done, changed.skipped, changed.segments) == (2, 1, 3)
    assert index_coco_ray([photos], coco, db, TINY).skipped == 3 and hashed_and_decoded() == ([], [])

    coffee = photos / "sub" / "coffee.png"
    original = coffee.read_bytes()
    coffee.write_bytes(original[: len(original) // 3])
    assert index_coco_ray([photos], coco, db, TINY).failed == 1
    assert hashed_and_decoded() == (["coffee.png"], ["coffee.png"])  # other content: embedded again, and fails
    coffee.write_bytes(original)
    repaired = index_coco_ray([photos], coco, db, TINY)
    assert (repaired.failed, repaired.skipped) == (0, 3) and hashed_and_decoded() == (["coffee.png"], [])
    ix = SegmentIndex.open(db)
    assert ix.store.failures() == []
    ix.close()
    index_coco([photos], coco, tmp_path / "fresh", TINY)
    assert_same(db, tmp_path / "fresh")


def test_a_photo_that_kills_its_embedding_worker_is_recorded_and_the_rest_indexed(
    ray_local, world, tmp_path, monkeypatch
):
    """The labelled dataset's actor kept no count of its deaths: Ray restarted it and
    retried the photo for ever (the masker run's actor stops after two)."""
    import os

    from usesearch.indexer import coco_ray

    class CrashesOnRocket(coco_ray.AnnotationWorker):
        def _one(self, rgb, batch, i):
            if str(batch["path"][i]).endswith("rocket.png"):
                os._exit(1)  # as a native crash or the OOM killer would end it
            return super()._one(rgb, batch, i)

    monkeypatch.setattr(coco_ray, "AnnotationWorker", CrashesOnRocket)
    photos, coco_file = world
    db = tmp_path / "db"
    report = index_coco_ray([photos], coco_file, db, TINY, workers=1)
    with SegmentIndex.open(db) as ix:
        failed = {Path(f.path).name: f for f in ix.store.failures()}
        assert failed.keys() == {"rocket.png"} and failed["rocket.png"].error_class == "WorkerDied"
        assert {Path(r.image_path).name for r in ix.store.rows(ix.store.segment_ids()).values()} == {
            "chelsea.png",
            "coffee.png",
        }
    assert report.failed == 1 and report.on_failed == 2 and not list((db / FRAGMENTS).iterdir())


def test_a_device_the_cluster_lacks_is_refused_before_the_index_folder_is_made(ray_local, world, tmp_path):
    """It was refused inside the writer: an empty index was left, tied to the preset."""
    from usesearch.errors import UsesearchError
    from usesearch.indexer.distributed import index_paths_ray

    photos, coco_file = world
    cuda = IndexOptions(preset="tiny", device="cuda", masker="felzenszwalb")
    with pytest.raises(UsesearchError, match="this Ray cluster has no GPU"):
        index_coco_ray([photos], coco_file, tmp_path / "labelled", cuda)
    with pytest.raises(UsesearchError, match="this Ray cluster has no GPU"):
        index_paths_ray([photos], tmp_path / "proposals", cuda)
    assert not (tmp_path / "labelled").exists() and not (tmp_path / "proposals").exists()
