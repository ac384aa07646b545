"""Photos a COCO file lists with no annotation (``ListedPhoto``): the audit searches
them for overlooked objects as it does annotated photos. It walked annotated photos
alone, so a photo whose every object its annotators missed, the plainest overlooked
case, could never be found."""

import json
import os

from typer.testing import CliRunner

from tests.helpers import audit_cli, write_photos
from tests.test_coco_index import write_coco
from usesearch.cli.app import app


def _overlooked_photos(db) -> set[str]:
    return {os.path.basename(item["image"]) for item in audit_cli(db, "-k", "1000")["overlooked"]}


def test_photos_listed_without_annotations_are_searched_for_overlooked_objects(tmp_path):
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket", "coffee"))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png"], 1)
    dataset = json.loads(coco.read_text())
    for n, name in enumerate(["sub/rocket.png", "coffee.png"], start=2):
        h, w = 96, 96  # (write_photos' thumbnails: the entries' sizes are not checked without annotations)
        dataset["images"].append({"id": n, "file_name": name, "height": h, "width": w})
    coco.write_text(json.dumps(dataset))
    db = tmp_path / "db"
    args = ["index", str(photos), "--db", str(db), "--coco", str(coco), "--preset", "tiny"]
    made = CliRunner().invoke(app, [*args, "--masker", "felzenszwalb"])
    said = " ".join(made.output.split())
    assert made.exit_code == 0 and "2 photos the file lists with no annotation: `usesearch audit`" in said, said
    assert _overlooked_photos(db) == {"chelsea.png", "rocket.png", "coffee.png"}
    assert "2 photo(s) listed with no annotation: searched for overlooked objects too" in audit_cli.output
    # Off the file's list: off the audit's (the audit's checkpoint is of the index before).
    dataset["images"] = [entry for entry in dataset["images"] if entry["file_name"] != "coffee.png"]
    coco.write_text(json.dumps(dataset))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "1 photo the file lists with no annotation" in " ".join(again.output.split())
    assert _overlooked_photos(db) == {"chelsea.png", "rocket.png"}
    assert "1 photo(s) listed with no annotation" in audit_cli.output


def test_a_listed_photo_no_masker_has_run_on_is_said_not_searched(tmp_path):
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png"], 1)
    dataset = json.loads(coco.read_text())
    dataset["images"].append({"id": 2, "file_name": "sub/rocket.png", "height": 96, "width": 96})
    coco.write_text(json.dumps(dataset))
    db = tmp_path / "db"
    labels = ["index", str(photos / "chelsea.png"), "--db", str(db), "--preset", "tiny", "--masker", "felzenszwalb"]
    assert CliRunner().invoke(app, labels).exit_code == 0  # chelsea's proposals: rocket has none
    made = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--coco", str(coco), "--preset", "tiny"])
    assert made.exit_code == 0, made.output
    assert _overlooked_photos(db) == {"chelsea.png"}
    said = " ".join(audit_cli.output.split())
    assert "1 photo(s) listed with no annotation have no proposals yet: the overlooked list cannot see them" in said


def test_annotated_photos_the_masker_gave_no_proposal_are_said(tmp_path):
    """The tiny preset's SAM (random weights) proposes nothing: the overlooked and
    badly_located lists came out empty with no word of why."""
    photos = write_photos(tmp_path / "photos", ("chelsea",))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png"], 1)
    db = tmp_path / "db"
    args = ["index", str(photos), "--db", str(db), "--coco", str(coco), "--preset", "tiny"]
    made = CliRunner().invoke(app, [*args, "--masker", "sam", "--points-per-side", "4"])
    assert made.exit_code == 0 and "no masks" in made.output, made.output
    assert _overlooked_photos(db) == set()
    said = " ".join(audit_cli.output.split())
    assert "1 annotated photo(s) got no proposal from the masker: the overlooked and badly_located" in said, said
    # What the counts leave out is said too: the crowd annotation, the class with one annotation.
    assert "2 annotations (1 crowd, left out) of 1 class, 0 proposals" in said, said
    assert "outliers: 1 class with one annotation, not ranked (none to compare with)" in said, said


def test_an_entry_whose_annotations_were_all_refused_is_no_listed_negative(tmp_path):
    """A detection dataset's box-only annotation is refused: its photo is not one the file
    lists with no annotation (the audit would search it as a negative)."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    coco = write_coco(tmp_path / "train.json", photos, ["chelsea.png"], 1)
    dataset = json.loads(coco.read_text())
    dataset["images"].append({"id": 2, "file_name": "sub/rocket.png", "height": 96, "width": 96})
    dataset["annotations"].append({"id": 9, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9]})
    coco.write_text(json.dumps(dataset))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--coco", str(coco), "--preset", "tiny"]
    made = CliRunner().invoke(app, args)
    said = " ".join(made.output.split())
    assert made.exit_code == 0 and "a box alone" in said and "with no annotation" not in said, said


def test_a_photo_whose_annotations_a_later_file_left_out_is_not_counted_as_annotated(tmp_path):
    """ "N annotated photo(s) have no proposals yet" counted every photo without
    proposals, one whose annotations --replace-split removed too."""
    photos = write_photos(tmp_path / "photos", ("chelsea", "rocket"))
    db = tmp_path / "db"
    both = write_coco(tmp_path / "both.json", photos, ["chelsea.png", "sub/rocket.png"], 1)
    args = ["index", str(photos), "--db", str(db), "--preset", "tiny", "--split", "train"]
    assert CliRunner().invoke(app, [*args, "--coco", str(both)]).exit_code == 0
    audit_cli(db)
    assert "2 annotated photo(s) have no proposals yet" in " ".join(audit_cli.output.split())
    one = write_coco(tmp_path / "one.json", photos, ["chelsea.png"], 1)
    replaced = CliRunner().invoke(app, [*args, "--coco", str(one), "--replace-split"])
    assert replaced.exit_code == 0, replaced.output
    audit_cli(db)
    assert "1 annotated photo(s) have no proposals yet" in " ".join(audit_cli.output.split())
