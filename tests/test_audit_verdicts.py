"""Verdicts on an audit's items (``audit/reviews.py``): kept in the index's catalog
through the web view or a spreadsheet (``audit --verdicts FILE.csv``), surviving
re-runs while the item is what was judged, and making room for the next items."""

import csv

import pytest
from typer.testing import CliRunner

from tests.helpers import audit_cli
from usesearch.cli.app import app
from usesearch.indexer import SegmentIndex
from usesearch.indexer.audit import AuditConfig, audit_index, reviews


@pytest.fixture
def db(planted_db):
    return planted_db


def kept(db) -> dict:
    index = SegmentIndex.open(db)
    try:
        return reviews.verdicts(index.store.engine)
    finally:
        index.close()


def filled_in(db, kind: str, verdicts: dict[int, str], to=None, delimiter=",", bom=False):
    """The last audit's ``KIND.csv`` with the verdict cells of rows ``verdicts`` (0: the
    first item) filled in, saved as a spreadsheet may save it (another name, ';', a BOM)."""
    source = db.parent / "report" / f"{kind}.csv"
    rows = list(csv.reader(source.read_text().splitlines()))
    for n, verdict in verdicts.items():
        rows[n + 1][rows[0].index("verdict")] = verdict
    out = to or source
    with open(out, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return out


def audit_refused(db, *more) -> str:
    result = CliRunner().invoke(app, ["audit", "--db", str(db), "--report-dir", str(db.parent / "report"), *more])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_verdicts_filled_in_a_spreadsheet_are_kept_and_the_next_items_come_up(db):
    """Verdicts were given only in the web view: a reviewer working through the CSV the
    audit wrote had no way to keep them. The verdict column is now read back."""
    first = audit_cli(db, "-k", "10")
    swaps = [i["item"] for i in first["swapped"]]
    saved = filled_in(db, "swapped", {0: " OK", 1: "wrong", 2: ""}, db.parent / "swapped (1).csv", ";", bom=True)
    outlier = filled_in(db, "outliers", {0: "wrong"})
    index = SegmentIndex.open(db)  # a verdict on an item no list holds (its photo pruned since): not counted
    reviews.mark(index.store.engine, "swapped", "train:987654321", "ok")
    index.close()
    again = audit_cli(db, "-k", "10", "--verdicts", str(saved), "--verdicts", str(outlier))
    said = " ".join(audit_cli.output.split())  # type: ignore[attr-defined]
    assert "swapped (1).csv (swapped): 2 verdicts kept (1 ok, 1 wrong)" in said, said
    assert "outliers.csv (outliers): 1 verdict kept (1 wrong)" in said, said
    assert kept(db) == {
        ("swapped", "train:987654321"): "ok",
        ("swapped", swaps[0]): "ok",
        ("swapped", swaps[1]): "wrong",
        ("outliers", first["outliers"][0]["item"]): "wrong",
    }
    assert [i["item"] for i in again["swapped"]][:8] == swaps[2:]  # the reviewed left out, the next come up
    assert "swapped: " in said and " found, 2 reviewed" in said.split("swapped: ")[-1].split(";")[0], said
    assert first["outliers"][0]["item"] not in {i["item"] for i in again["outliers"]}
    shown = audit_cli(db, "-k", "10", "--include-reviewed")  # the CSV shows them, ready to be changed
    taken = filled_in(db, "swapped", {0: "none", 1: "ok"})
    audit_cli(db, "-k", "10", "--verdicts", str(taken))
    assert shown["swapped"][0]["verdict"] == "ok"
    assert kept(db) == {
        ("swapped", "train:987654321"): "ok",
        ("swapped", swaps[1]): "ok",
        ("outliers", first["outliers"][0]["item"]): "wrong",
    }
    assert "1 verdict kept (1 ok), 1 taken back" in " ".join(audit_cli.output.split())  # type: ignore[attr-defined]


def test_a_file_that_cannot_be_read_whole_keeps_no_verdict(db, tmp_path):
    """A cell that is no verdict, an item given two verdicts, a file that is no list's
    CSV, an index never audited: one line naming the file (and row), nothing kept, even
    of the files read before it."""
    early = tmp_path / "early.csv"
    early.write_text("rank,item,verdict\n1,train:1,ok\n")
    assert f"{db} has not been audited yet, so no verdict can be given: run `usesearch audit --db {db}`" in (
        audit_refused(db, "--verdicts", str(early))
    )
    audit_cli(db, "-k", "10")
    good = filled_in(db, "swapped", {0: "ok"}, tmp_path / "good.csv")
    bad = filled_in(db, "outliers", {0: "wrong", 2: "maybe"}, tmp_path / "bad.csv")
    said = audit_refused(db, "--verdicts", str(good), "--verdicts", str(bad))
    assert f"{bad}:4: a verdict is ok, wrong or none (to take one back;" in said and "'maybe'" in said, said
    from tests.helpers import invoke_in_a_fresh_python  # (said before torch's import: it took 4.6 s)

    [(exit_code, fresh)], heavy = invoke_in_a_fresh_python(["audit", "--db", str(db), "--verdicts", str(bad)])
    assert exit_code == 2 and "a verdict is ok, wrong or none" in fresh and "torch" not in heavy, (fresh, heavy)
    twice = filled_in(db, "outliers", {0: "ok"}, tmp_path / "twice.csv")
    rows = twice.read_text().splitlines()
    twice.write_text("\n".join([*rows, rows[1].replace(",ok", ",wrong")]) + "\n")
    assert f"{twice}:{len(rows) + 1}: " in audit_refused(db, "--verdicts", str(twice))
    assert "has another verdict at line 2" in audit_refused(db, "--verdicts", str(twice))
    one, two = (filled_in(db, "outliers", {0: v}, tmp_path / f"{v}.csv") for v in ("ok", "wrong"))
    assert "has one verdict in " in audit_refused(db, "--verdicts", str(one), "--verdicts", str(two))
    cut = tmp_path / "cut.csv"  # a swapped list with a column deleted: read as outliers' before
    rows = list(csv.reader(filled_in(db, "swapped", {0: "wrong"}, tmp_path / "whole.csv").read_text().splitlines()))
    gone = rows[0].index("preferred_probability")
    with open(cut, "w", newline="") as f:
        csv.writer(f).writerows([r[:gone] + r[gone + 1 :] for r in rows])
    said = audit_refused(db, "--verdicts", str(cut))
    assert "holds the columns of no one audit list (nearest: swapped, but it lacks preferred_probability)" in said
    other = tmp_path / "notes.csv"
    other.write_text("item,verdict,where\ntrain:1,ok,here\n")
    assert f"{other} holds the columns of no one audit list" in audit_refused(db, "--verdicts", str(other))
    other.write_text("id,label\n1,cat\n")
    assert f"{other} is not an audit list's CSV: it has no item or verdict column" in audit_refused(
        db, "--verdicts", str(other)
    )
    assert kept(db) == {}


def test_a_row_counts_only_for_the_item_it_showed(db):
    """A CSV written before an item was relabelled judged the old label: its row is said
    and not kept (else the relabelled item would be left out as reviewed); an item no
    longer in the list, the same. The other rows are kept."""
    from sqlalchemy import update

    from usesearch.indexer.records import IndexInfo, SegmentRecord

    first = audit_cli(db, "-k", "10")
    judged, other_row = first["swapped"][0], first["swapped"][1]
    saved = filled_in(db, "swapped", {0: "ok", 1: "wrong", 2: "ok"}, db.parent / "kept.csv")
    text = saved.read_text().splitlines()
    third = first["swapped"][2]["item"]
    text[3] = text[3].replace(third, "train:987654321", 1)  # an item the list does not hold
    saved.write_text("\n".join(text) + "\n")
    label = next(c for c in ("cat", "dog", "cup", "rocket", "person") if c != judged["labelled"])
    store = SegmentIndex.open(db).store
    with store.sessions.begin() as s:  # as `index --coco` of an edited file relabels it: in place
        s.execute(update(SegmentRecord).where(SegmentRecord.id == judged["segment_id"]).values(category=label))
        s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
    store.close()
    # Checked against the last audit's lists, the row would match (they still show the old
    # label), and the verdict be kept, then dropped by the next audit: refused until audited.
    assert "changed since its last audit" in audit_refused(db, "--verdicts", str(saved))
    assert kept(db) == {}
    audit_cli(db, "-k", "10")  # the lists as the index is now
    audit_cli(db, "-k", "10", "--verdicts", str(saved))
    said = " ".join(audit_cli.output.split())  # type: ignore[attr-defined]
    assert "kept.csv (swapped): 1 verdict kept (1 wrong); 1 no longer in the list" in said, said
    assert f"1 changed since the file was written (e.g. {judged['item']}): judge them again" in said, said
    assert kept(db) == {("swapped", other_row["item"]): "wrong"}
    # A file none of whose rows is in the list ("the index changed since" of another index's list).
    foreign = db.parent / "foreign.csv"
    rows = saved.read_text().splitlines()
    foreign.write_text("\n".join([rows[0], rows[3]]) + "\n")  # (the item the list does not hold)
    audit_cli(db, "-k", "10", "--verdicts", str(foreign))
    said = " ".join(audit_cli.output.split())  # type: ignore[attr-defined]
    assert "foreign.csv (swapped): 0 verdicts kept; none of its 1 item is in the list now (fixed and" in said, said
    assert kept(db) == {("swapped", other_row["item"]): "wrong"}


def test_reviews_survive_a_rerun(db):
    from usesearch.indexer.folder import open_store

    first = audit_cli(db, "-k", "10")
    judged = first["swapped"][0]["item"]
    store = open_store(db, read_only=True)  # as the web app marks them: through a reader's catalog
    reviews.mark(store.engine, "swapped", judged, "wrong")
    store.close()
    again = audit_cli(db, "-k", "10")
    assert judged not in {i["item"] for i in again["swapped"]}
    assert again["swapped"][0]["item"] == first["swapped"][1]["item"]
    shown = audit_cli(db, "-k", "10", "--include-reviewed")
    assert shown["swapped"][0]["item"] == judged and shown["swapped"][0]["verdict"] == "wrong"
    assert shown["swapped"][1]["verdict"] is None
    assert (db.parent / "report" / "swapped.png").is_file()
    audit_cli(db, "-k", "10", "--no-sheets")  # no sheet of the last run's items left beside the new lists
    assert not list((db.parent / "report").glob("*.png")) and (db.parent / "report" / "swapped.csv").is_file()


def test_a_verdict_holds_for_the_item_judged_not_for_it_relabelled_since(db):
    """A cat judged ``ok`` as a cat, then relabelled "rocket" by an edit of its COCO
    file (in place: its segment kept), was left out of every list as reviewed, its old
    verdict shown beside its new label. It is to be judged again; the other verdicts hold."""
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from usesearch.indexer.records import IndexInfo, SegmentRecord
    from usesearch.indexer.web.app import create_app

    first = audit_cli(db, "-k", "10")
    judged, kept = first["swapped"][0], first["swapped"][1]
    index = SegmentIndex.open(db)
    client = TestClient(create_app(index))
    for item in (judged, kept):
        answer = client.post("/api/audit/swapped/review", json={"item": item["item"], "verdict": "ok"})
        assert answer.status_code == 200, answer.text
    # A list's count is its `total`, as a page's is (its `items` is the page's list).
    counts = client.get("/api/audit").json()["lists"]["swapped"]
    whole = client.get("/api/audit/swapped", params={"include_reviewed": True}).json()["total"]
    left = client.get("/api/audit/swapped").json()["total"]
    assert counts == {"total": whole, "reviewed": 2} and left == whole - 2 and whole >= len(first["swapped"])
    index.close()
    again = audit_cli(db, "-k", "10")
    assert {judged["item"], kept["item"]}.isdisjoint(i["item"] for i in again["swapped"])
    other = next(c for c in ("cat", "dog", "cup", "rocket", "person") if c != judged["labelled"])
    store = SegmentIndex.open(db).store
    with store.sessions.begin() as s:  # as `index --coco` relabels an annotation: in place, a new generation
        s.execute(update(SegmentRecord).where(SegmentRecord.id == judged["segment_id"]).values(category=other))
        s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
    store.close()
    index = SegmentIndex.open(db)  # the lists are of the index as it was: said, until audited again
    summary = TestClient(create_app(index)).get("/api/audit").json()
    index.close()
    assert summary["stale"].startswith("the index changed since this audit: run `usesearch audit --db ")
    index = SegmentIndex.open(db)  # a verdict given on lists that predate the change: refused, as the CLI does
    late = TestClient(create_app(index)).post("/api/audit/swapped/review", json={"item": kept["item"], "verdict": "ok"})
    index.close()
    assert late.status_code == 409 and "run `usesearch audit --db " in late.json()["detail"], late.text
    shown = audit_cli(db, "-k", "200", "--include-reviewed")
    relabelled = next(i for i in shown["swapped"] if i["item"] == judged["item"])
    assert relabelled["labelled"] == other and relabelled["verdict"] is None
    assert next(i for i in shown["swapped"] if i["item"] == kept["item"])["verdict"] == "ok"
    index = SegmentIndex.open(db)
    page = TestClient(create_app(index)).get("/api/audit/swapped", params={"limit": 96}).json()
    index.close()
    assert page["stale"] is None
    assert judged["item"] in {i["item"] for i in page["items"]} and kept["item"] not in {
        i["item"] for i in page["items"]
    }


def test_reviewed_items_make_room_for_the_next_ones(db, tmp_path):
    """A list shows ``keep`` items besides the reviewed ones: with its first ``keep``
    reviewed, a re-run shows the next ``keep`` (before, the same reviewed items filled
    it for good). It holds ``keep`` more as headroom: those reviews take no new photo
    pass (at archive scale, one review made the next audit rank every photo again);
    past the headroom the photo pass runs again, the classes' sums and leak pairs kept."""
    import shutil

    shutil.copytree(db, tmp_path / "untouched")
    first = audit_index(db, config=AuditConfig(keep=5))
    assert len(first["lists"]["swapped"]) == 5
    from usesearch.indexer.folder import open_store

    store = open_store(db, read_only=True)
    for item in first["lists"]["swapped"]:
        reviews.mark(store.engine, "swapped", item["item"], "ok")
    store.close()
    said: list[str] = []
    again = audit_index(db, config=AuditConfig(keep=5), say=said.append)
    assert not any("runs again" in line for line in said), said  # within the headroom
    wider = audit_index(tmp_path / "untouched", config=AuditConfig(keep=10))
    assert again["lists"]["swapped"] == wider["lists"]["swapped"]  # the 5 reviewed, then the next 5
    assert all(again["lists"][kind] == first["lists"][kind] for kind in ("leaks", "outliers"))
    store = open_store(db, read_only=True)
    for item in again["lists"]["swapped"][5:]:
        reviews.mark(store.engine, "swapped", item["item"], "ok")
    store.close()
    past = audit_index(db, config=AuditConfig(keep=5), say=said.append)
    assert any("10 items reviewed: the photo pass runs again" in line for line in said), said
    widest = audit_index(tmp_path / "untouched", config=AuditConfig(keep=15))
    assert past["lists"]["swapped"] == widest["lists"]["swapped"]  # the 10 reviewed, then the next 5
    again = past
    said.clear()
    assert audit_index(db, config=AuditConfig(keep=5), say=said.append) == again  # nothing new reviewed: as it was
    assert not any("runs again" in line for line in said)
    (db / "audit" / "checkpoint.npz").write_bytes(b"PK\x03\x04 torn by a copy")
    assert audit_index(db, config=AuditConfig(keep=5)) == again  # a torn checkpoint: started afresh


def test_a_row_is_read_whole_whatever_its_cells_hold(tmp_path):
    """Read as text split into lines, a photo name holding a line separator (U+2028, a
    form feed) split its row in two: its verdict lost, or the file refused at a cell that
    was no verdict; a cell past the csv module's limit escaped as a traceback."""
    from usesearch.errors import UsesearchError
    from usesearch.indexer.audit.report import COMMON, CSV_COLUMNS
    from usesearch.indexer.audit.verdict_files import read_verdicts
    from usesearch.io.tables import cell_text, text_cell

    names = ["/p/a\u2028b.jpg", "/p/c\rd.jpg", "/p/f\x0cg.jpg", "'=quoted.jpg"]
    items = [{"item": f"train:{n}", "segment_id": n, "labelled": "cat", "image": name} for n, name in enumerate(names)]
    columns = COMMON + CSV_COLUMNS["outliers"] + ["verdict"]
    path = tmp_path / "outliers.csv"
    with open(path, "w", newline="") as f:  # as report.write_lists writes it
        writer = csv.writer(f)
        writer.writerow(columns)
        for item in items:
            writer.writerow([text_cell(item.get(c, "")) if c != "verdict" else "wrong" for c in columns])
    found = read_verdicts(path, {"outliers": items})
    assert [m[1] for m in found.marks] == [i["item"] for i in items] and not found.changed and not found.gone
    # As a spreadsheet re-saves it: a capital in the header, a whole number as "1.0" ("1,0" with ';').
    rows = list(csv.reader(path.open(newline="")))
    rows[0][columns.index("verdict")] = "Verdict"
    rows[2][columns.index("segment_id")] = "1.0"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert [m[1] for m in read_verdicts(path, {"outliers": items}).marks] == [i["item"] for i in items]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([[*rows[0], "verdict"], *[[*r, ""] for r in rows[1:]]])
    with pytest.raises(UsesearchError, match="has verdict twice among its columns"):
        read_verdicts(path, {"outliers": items})
    # A JSON file given: said as no list's CSV, not as its fragments "twice among its columns" (665 characters).
    json_file = path.with_suffix(".json")
    json_file.write_text('[{"iscrowd": 0}, {"iscrowd": 0}, {"iscrowd": 0}, {"iscrowd": 0}]\n')
    with pytest.raises(UsesearchError, match="is not an audit list's CSV: it has no item or verdict column"):
        read_verdicts(json_file, {"outliers": items})
    assert cell_text(str(text_cell("'=x"))) == "'=x" and cell_text(str(text_cell("=x"))) == "=x"
    path.write_text(",".join(columns) + "\n" + "x" * 200_000 + "\n")
    with pytest.raises(UsesearchError, match="outliers.csv:2: not a CSV row"):
        read_verdicts(path, {"outliers": items})


def test_lists_of_another_shape_name_the_audit_command_with_the_catalog(tmp_path):
    """Its suggested `usesearch audit --db X` left out a PostgreSQL catalog's --db-url,
    so the command it gave was refused there."""
    import pytest

    from usesearch.errors import NotFoundError
    from usesearch.indexer.audit.lists_file import FOLDER, RESULT, load_lists

    (tmp_path / "db" / FOLDER).mkdir(parents=True)
    (tmp_path / "db" / FOLDER / RESULT).write_text("[]")
    with pytest.raises(NotFoundError) as refused:
        load_lists(tmp_path / "db", "postgresql://me:secret@host/photos")
    said = str(refused.value)
    assert f"run `usesearch audit --db {tmp_path / 'db'} --db-url postgresql://me@host/photos` again" in said, said


def test_an_audit_interrupted_says_its_batches_are_kept_and_how_it_goes_on(db, monkeypatch):
    """Ctrl-C printed "interrupted" alone, its checkpoint kept and unsaid."""
    import shutil

    from typer.testing import CliRunner

    from usesearch.cli.app import app
    from usesearch.indexer.audit import run

    shutil.rmtree(db / run.FOLDER, ignore_errors=True)  # (a fresh audit: its first checkpoint is this run's)
    real = run._photo_pass

    def then_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_photo_pass", then_ctrl_c)
    result = CliRunner().invoke(app, ["audit", "--db", str(db), "--report-dir", str(db.parent / "report")])
    assert result.exit_code == 130 and (db / run.FOLDER / run.CHECKPOINT).is_file(), result.output
    assert f"interrupted; the audit's finished batches are kept: `usesearch audit --db {db}` goes on" in " ".join(
        result.output.split()
    )
    monkeypatch.setattr(run, "_photo_pass", real)
    assert audit_cli(db)["swapped"]  # and it goes on
