"""Auditing: planted wrong labels in a synthetic COCO dataset rank at the top."""

import json

import numpy as np
from typer.testing import CliRunner

from usesearch.cli.app import app
from usesearch.training.synthetic import write_instances_coco


def test_planted_wrong_labels_rank_at_the_top(trained_tiny_head, tmp_path):
    head, _ = trained_tiny_head
    coco_json, planted = write_instances_coco(tmp_path / "data", 60, seed=7, wrong_fraction=0.15)
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "audit",
            "--coco",
            str(coco_json),
            "--images",
            str(tmp_path / "data" / "images"),
            "--head",
            str(head),
            "--out",
            str(out),
            "-k",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    suspects = json.loads((out / "suspects.json").read_text())
    ranked = [s["annotation_id"] for s in suspects]
    assert len(planted) >= 5 and set(planted) <= set(ranked)
    # Rank-based AUROC: how often a planted label outranks a clean one.
    position = {a: i for i, a in enumerate(ranked)}
    clean = [a for a in ranked if a not in planted]
    auroc = float(np.mean([position[p] < position[c] for p in planted for c in clean]))
    top = ranked[: len(planted)]
    # 0.5 is chance; the tiny head (about 0.4 top-1 on this world) gives 0.75-0.8 over
    # 60 photos (30 photos put it at exactly 0.8 for one seed of the training's draws).
    assert auroc > 0.7, (auroc, len(planted), len(ranked))
    # Random ranking would put ~15% planted labels in the top |planted|; the tiny head
    # (about 0.4 top-1 on this world) puts twice that or more there.
    precision = len(set(top) & planted) / len(planted)
    assert precision >= 0.3, (precision, auroc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["annotations"] == len(ranked) and 0 <= summary["agreement"] <= 1
    assert "most_confused" in summary and (out / "report.html").read_text().count("<figure>") == 10
    assert (out / ".usesearch-audit").is_file()  # its files may be replaced by the next report
    assert (out / "suspects.csv").read_text().splitlines()[0].startswith("rank,annotation_id")
    # -k bounds what is shown; the files keep the whole ranking, and the last line says which is which.
    printed = [line for line in result.output.splitlines() if " ann " in line and "labelled" in line]
    assert len(printed) == 10 and len(ranked) > 10
    assert f"prefers another class for {sum(x['margin'] > 0 for x in suspects)} of {len(ranked)} annotations" in (
        result.output
    )
    assert "suspects.json (all ranked)" in result.output and "(the top 10)" in result.output
    assert "mask" not in suspects[0] and suspects[0]["best_other"] != suspects[0]["labelled"]
    assert json.loads((out / "problems.json").read_text()) == []


def test_eval_audit_records_what_it_cannot_audit_and_goes_on(trained_tiny_head, tmp_path):
    """A missing or unreadable photo, an entry whose size is not its photo's, a broken
    mask: each recorded in problems.json, the rest audited; one class is refused."""
    head, _ = trained_tiny_head
    coco_json, _ = write_instances_coco(tmp_path / "data", 6, seed=3, wrong_fraction=0.0)
    coco = json.loads(coco_json.read_text())
    images = tmp_path / "data" / "images"
    first, second, third = coco["images"][:3]
    (images / first["file_name"]).unlink()
    (images / second["file_name"]).write_bytes(b"not a photo")
    third["height"] += 1
    coco["annotations"].append(
        {"id": 999, "image_id": coco["images"][3]["id"], "category_id": 1, "segmentation": [[1]]}
    )
    coco_json.write_text(json.dumps(coco))
    args = ["eval", "audit", "--coco", str(coco_json), "--images", str(images), "--head", str(head)]
    result = CliRunner().invoke(app, [*args, "--report-dir", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    problems = json.loads((tmp_path / "audit" / "problems.json").read_text())
    assert sorted(p["kind"] for p in problems) == ["broken mask", "photo missing", "photo missing", "size mismatch"]
    audited = {s["image"].rsplit("/", 1)[1] for s in json.loads((tmp_path / "audit" / "suspects.json").read_text())}
    assert audited == {i["file_name"] for i in coco["images"][3:]}
    lost = sum(a["image_id"] in (first["id"], second["id"]) for a in coco["annotations"])
    assert f"4 annotation(s) or photo(s) could not be audited ({lost} annotations on the photos missing" in " ".join(
        result.output.split()
    )  # (a photo's annotations went uncounted)
    # A wrong --images (none of the photos there) is refused, as `index --coco` refuses it: it wrote
    # an empty report ("0 of 0 annotations") and exited 0.
    (tmp_path / "empty").mkdir()
    wrong = [*args[:5], str(tmp_path / "empty"), *args[6:], "--report-dir", str(tmp_path / "wrong")]
    refused = CliRunner().invoke(app, wrong)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "annotated photo(s) " in said and "nothing is audited (give the folder" in said
    assert not (tmp_path / "wrong").exists()
    as_json = CliRunner().invoke(app, [*args, "--report-dir", str(tmp_path / "audit2"), "--json", "-k", "3"])
    summary = json.loads(as_json.stdout)  # the summary and the top 3, on stdout alone
    ranked = json.loads((tmp_path / "audit" / "suspects.json").read_text())
    assert summary["problems"] == 4 and summary["annotations"] == len(ranked) and summary["top"] == ranked[:3]
    coco["categories"] = coco["categories"][:1]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == coco["categories"][0]["id"]]
    coco_json.write_text(json.dumps(coco))
    one = CliRunner().invoke(app, [*args, "--report-dir", str(tmp_path / "one")])
    assert one.exit_code == 2 and "names 1 category: an audit weighs each label against the others" in one.output


def test_only_the_most_suspect_keep_their_masks_and_the_ranking_is_the_same(tiny_use, tmp_path):
    """At 10^7 annotations every mask kept was 9 GB; the report draws the top -k only."""
    from usesearch.io.coco_dataset import read_coco
    from usesearch.tasks.audit import audit_coco

    coco_json, _ = write_instances_coco(tmp_path / "data", 8, seed=3, wrong_fraction=0.2)
    every, _, _ = audit_coco(tiny_use, read_coco(coco_json), tmp_path / "data" / "images", masks_for=10**6)
    few, _, _ = audit_coco(tiny_use, read_coco(coco_json), tmp_path / "data" / "images", masks_for=3)
    assert len(every) > 3 and [s.row() for s in few] == [s.row() for s in every]
    assert [s.mask is not None for s in few] == [True] * 3 + [False] * (len(few) - 3)
    assert [s.mask for s in few[:3]] == [s.mask for s in every[:3]]


def test_a_class_named_as_a_formula_is_text_in_every_audit_table(tmp_path):
    """A dataset's class named `=cmd|calc` was written as it is, and a spreadsheet opening
    the CSV ran it; numbers (negative margins) stay numbers."""
    import csv

    from usesearch.indexer.audit.report import _cell
    from usesearch.tasks.audit import Suspect, write_report

    odd = Suspect(7, "-photo.png", "=cmd|calc", "@SUM(1)", -0.25, 0.5, 0.25, "@SUM(1)", None)
    write_report([odd], tmp_path / "r", top=0)
    (row,) = list(csv.reader((tmp_path / "r" / "suspects.csv").open()))[1:]
    assert row == ["1", "7", "'-photo.png", "'=cmd|calc", "'@SUM(1)", "-0.2500"]
    assert json.loads((tmp_path / "r" / "suspects.json").read_text())[0]["labelled"] == "=cmd|calc"  # JSON: as is
    # A list cell is JSON: it opens with "[", never read as a formula, its items as they are.
    assert [_cell(v) for v in ("+1", "cat", -0.5, 3, ["=a", "b"])] == ["'+1", "cat", "-0.5000", "3", '["=a", "b"]']


def test_crowd_annotations_are_left_out_of_the_ranking_as_the_index_audit_leaves_them(tiny_use, tmp_path):
    """`eval audit` ranked a crowd region (one mask over many objects) as a suspect
    label; `audit --db` leaves crowds out: the two disagreed on one dataset."""
    from usesearch.io.coco_dataset import read_coco
    from usesearch.tasks.audit import audit_coco

    coco_json, _ = write_instances_coco(tmp_path / "data", 6, seed=5, wrong_fraction=0.0)
    images = tmp_path / "data" / "images"
    every, _, none = audit_coco(tiny_use, read_coco(coco_json), images)
    coco = json.loads(coco_json.read_text())
    crowds = {a["id"] for a in coco["annotations"][::3]}
    for a in coco["annotations"]:
        a["iscrowd"] = int(a["id"] in crowds)
    coco_json.write_text(json.dumps(coco))
    ranked, _, crowd = audit_coco(tiny_use, read_coco(coco_json), images)
    assert none == 0 and crowd == len(crowds) > 0
    assert {s.annotation_id for s in ranked} == {s.annotation_id for s in every} - crowds
