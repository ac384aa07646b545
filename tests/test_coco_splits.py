"""A labelled dataset's splits across reruns (``usesearch index IMAGES --coco FILE.json
--split NAME``): two files of one split keep each other's annotations, a file indexed
under a wrong split is forgotten with ``--replace-split``, a changed photo names the
splits its annotations went with (the reruns themselves: test_coco_reruns.py)."""

import json

from typer.testing import CliRunner

from tests.helpers import OPTS, write_photos
from tests.test_coco_index import TINY, write_coco
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SegmentIndex, index_paths
from usesearch.indexer.coco_index import index_coco


def test_two_files_indexed_as_one_split_keep_each_others_annotations(tmp_path):
    """Also on a photo both files annotate (its stored annotations this file lacks are
    the other's), and both ways round; an id the split already holds from the other
    file is refused as a problem (the audit and failures name annotations by split and
    id), never put in place of the other file's."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    first = write_coco(tmp_path / "part1.json", photos, ["chelsea.png", "sub/rocket.png"], 1)  # ids 1-4
    second = write_coco(tmp_path / "part2.json", photos, ["sub/rocket.png"], 10)  # ids 10, 11, a shared photo
    db = tmp_path / "db"
    index_coco([photos], first, db, IndexOptions(preset="tiny"), split="train")
    report = index_coco([photos], second, db, IndexOptions(preset="tiny"), split="train")
    assert report.segments == 2 and report.removed == 0 and report.shared_with == [str(first.resolve())]
    again = index_coco([photos], first, db, IndexOptions(preset="tiny"), split="train")
    assert (again.segments, again.removed, again.skipped) == (0, 0, 2)
    ix = SegmentIndex.open(db)
    assert ix.store.label_summary()["annotations_by_class"] == {"train": {"cat": 2, "rocket": 4}}
    ids = lambda: sorted(ix.store.annotation_photos("train"))  # noqa: E731
    assert ids() == [1, 2, 3, 4, 10, 11]
    clashing = write_coco(tmp_path / "part3.json", photos, ["chelsea.png", "sub/rocket.png"], 3)  # ids 3-6
    third = index_coco([photos], clashing, db, IndexOptions(preset="tiny"), split="train")
    assert sum("annotation id 3 is already in split 'train' on another photo" in p for p in third.problems) == 1
    assert sum("already in split" in p for p in third.problems) == 2 and third.removed == 0
    assert ids() == [1, 2, 3, 4, 5, 6, 10, 11]  # 5 and 6 are new; 3 and 4 stay part1's
    # Each file's problems are its own: part1 indexed again records its own afresh, and
    # part3's two stay (they were all deleted, and `failures` said nothing was refused).
    index_coco([photos], first, db, IndexOptions(preset="tiny"), split="train")
    assert sorted(p.coco_file for p in ix.store.annotation_problems()) == [str(clashing.resolve())] * 2
    ix.close()


def test_a_file_indexed_under_a_wrong_split_or_moved_is_forgotten_with_replace_split(tmp_path):
    """val.json indexed by mistake as --split train, or train.json moved: the split had
    two files for good, its file's removals never happened again ("annotations absent from
    this file are kept") and no command undid it. `--replace-split` makes the file the
    split's only one: the other's annotations and the removed ones go, said in a line."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    train = write_coco(tmp_path / "train.json", photos, ["chelsea.png", "sub/rocket.png"], 1)  # ids 1-4
    val = write_coco(tmp_path / "val.json", photos, ["sub/rocket.png"], 10)  # ids 10, 11
    db = tmp_path / "db"
    runner = CliRunner()
    index = lambda coco, *more: runner.invoke(  # noqa: E731
        app, ["index", str(photos), "--db", str(db), "--coco", str(coco), "--split", "train", *more, *TINY]
    )
    assert index(train).exit_code == 0 and index(val).exit_code == 0  # the mistake
    data = json.loads(train.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 4]  # and an annotation deleted
    train.write_text(json.dumps(data))
    kept = index(train)
    assert "annotations absent from this file are kept (--replace-split makes this file its only one)" in " ".join(
        kept.output.split()
    )
    ix = SegmentIndex.open(db)
    assert sorted(ix.store.annotation_photos("train")) == [1, 2, 3, 4, 10, 11]
    ix.close()
    import usesearch.indexer.coco_index as coco_index

    def killed(*args):
        raise KeyboardInterrupt

    real = coco_index._index_photo
    coco_index._index_photo = killed  # a run killed mid-pass: the other file is not forgotten yet
    try:
        index_coco([photos], train, db, IndexOptions(preset="tiny"), split="train", replace_split=True)
    except KeyboardInterrupt:
        pass
    finally:
        coco_index._index_photo = real
    ix = SegmentIndex.open(db)
    assert ix.store.split_files("train") == {str(train.resolve()), str(val.resolve())}
    ix.close()
    replaced = index(train, "--replace-split")
    said = " ".join(replaced.output.split())
    assert replaced.exit_code == 0 and "3 removed" in said, said
    assert f"split 'train' holds this file's annotations alone now: forgot {val.resolve()}" in said, said
    ix = SegmentIndex.open(db)
    assert sorted(ix.store.annotation_photos("train")) == [1, 2, 3]
    ix.close()
    assert "absent from this file are kept" not in index(train).output
    wrong = runner.invoke(app, ["index", str(photos), "--db", str(db), "--replace-split", *TINY])
    assert wrong.exit_code == 2 and "--replace-split replaces a labelled dataset's split" in wrong.output


def test_a_changed_photo_says_which_splits_annotations_went_with_its_old_content(tmp_path):
    """A photo whose content changed is made again: its proposals and every split's
    annotations go with the old content. The run that re-embeds one split's says so for
    the others by split (they went silently, and `removed` counted them and the
    proposals as the file's removed annotations); a masker run says so for all."""
    from tests.test_coco_index import TINY
    from tests.test_index_integrity import change_photo

    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    train = write_coco(tmp_path / "train.json", photos, ["chelsea.png", "sub/rocket.png"], 100)
    val = write_coco(tmp_path / "val.json", photos, ["chelsea.png"], 500)
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    runner = CliRunner()
    for coco in (train, val):
        assert runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(coco), *TINY]).exit_code == 0
    change_photo(photos, "chelsea")
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(train), *TINY])
    assert result.exit_code == 0, result.output
    assert "1 photo updated (2 annotations indexed, 0 relabelled, 0 removed)" in result.output, result.output
    assert "2 annotations (2 of split 'val') were on photos whose content changed" in result.output, result.output
    assert "split 'train') were" not in result.output  # its own: embedded again by this run
    # Its proposals went too, which no line said: the next `index` makes them again.
    said = "".join(result.output.replace("│", "").split())
    assert "1photo(" in said and "chelsea.png)changedsinceamaskerrun" in said, result.output
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(val), *TINY])
    assert result.exit_code == 0 and "content changed" not in result.output, result.output
    assert "since a masker run" not in result.output, result.output  # none left to lose
    change_photo(photos, "chelsea")
    again = index_paths([photos], db, IndexOptions(**OPTS))
    assert again.done == 1 and dict(again.annotations_lost) == {"train": 2, "val": 2}
    ix = SegmentIndex.open(db)
    assert ix.store.label_summary()["annotations_by_split"] == {"train": 2}  # rocket's; none of chelsea's


def test_a_split_made_whole_by_one_file_forgets_another_files_unfinished_pass(tmp_path):
    """`index --coco wrong.json --split train`, stopped at once; then right.json made the
    split its own: info and the audit still said wrong.json's pass was to be finished."""
    from usesearch.indexer.folder import open_store

    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    right = write_coco(tmp_path / "right.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    db = tmp_path / "db"
    index_coco([photos], right, db, IndexOptions(preset="tiny"), split="train")
    store = open_store(db)
    try:
        store.begin_pass("train", str(tmp_path / "wrong.json"))  # as the stopped run left it
    finally:
        store.close()
    assert SegmentIndex.open(db).store.unfinished_passes() == [("train", str(tmp_path / "wrong.json"))]
    index_coco([photos], right, db, IndexOptions(preset="tiny"), split="train")
    assert SegmentIndex.open(db).store.unfinished_passes() == []


def test_two_files_of_a_split_labelling_one_annotation_otherwise_are_said_to_disagree(tmp_path):
    """Each run of either file relabelled the annotation back, "1 relabelled", unsaid why."""
    photos = write_photos(tmp_path / "photos", ("chelsea",))
    val = write_coco(tmp_path / "val.json", photos, ["chelsea.png"], 1)
    copy = json.loads(val.read_text())
    copy["annotations"][0]["category_id"] = [c["id"] for c in copy["categories"] if c["name"] != "cat"][0]
    (tmp_path / "val_copy.json").write_text(json.dumps(copy))
    db = tmp_path / "db"
    args = ["index", str(photos), "--db", str(db), "--preset", "tiny", "--split", "val", "--coco"]
    assert CliRunner().invoke(app, [*args, str(val)]).exit_code == 0
    for coco in (tmp_path / "val_copy.json", val):
        said = " ".join(CliRunner().invoke(app, [*args, str(coco)]).output.split())
        other = val if coco != val else tmp_path / "val_copy.json"
        assert (
            "1 relabelled" in said
            and (f"1 annotation relabelled: where {other.resolve()} gives those ids other labels, the files disagree")
            in said
        ), said
