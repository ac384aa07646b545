"""What calibration cannot vouch for, said: a target asked of an index with nothing to
tune yet (exact, a graph) was dropped unsaid and the index later calibrated for 0.95; a
compressed index never calibrated (a rebuild cut short) searched at recall 0.81 unsaid;
a search by a segment under its measured image recall said nothing."""

import json

from typer.testing import CliRunner

import usesearch.indexer.calibration as calibration
from tests.helpers import write_photos
from tests.test_calibration import FACTORY
from tests.test_index_scale import synthetic_index
from usesearch.cli.app import app
from usesearch.indexer import SegmentIndex, reindex


def test_a_target_asked_of_an_index_with_nothing_to_tune_is_kept_for_its_first_calibration(tmp_path):
    db = tmp_path / "db"
    synthetic_index(db, n=3000, dim=32)
    graph = reindex(db, "HNSW8", recall_target=0.97, latency_budget_ms=30.0, text_queries=False)
    assert graph.calibration is None and SegmentIndex.open(db).calibration is None
    assert graph.calibration_note is not None
    assert graph.calibration_note.startswith("--recall-target 0.97 and --latency-budget 30 kept, not applied: a graph")
    assert calibration.stored(db) == (0.97, 30.0)
    exact = reindex(db, "Flat", recall_target=0.9, text_queries=False)  # (a --factory given: it stays exact)
    assert exact.calibration_note == (
        "--recall-target 0.9 kept, not applied: this exact index finds every neighbour and stays exact (its "
        "--factory is fixed; `usesearch reindex --factory auto` lets it grow into a compressed one)"
    )
    assert calibration.stored(db) == (0.9, 30.0)  # (the budget asked before kept beside it)
    budget = reindex(db, "HNSW8", latency_budget_ms=20.0, text_queries=False)  # a budget alone: the target stays
    assert budget.calibration_note is not None and budget.calibration_note.startswith("--latency-budget 20 kept")
    assert calibration.stored(db) == (0.9, 20.0)
    grown = reindex(db, FACTORY, text_queries=False)  # nothing asked now: what was asked before
    assert grown.calibration is not None and grown.calibration_note is None
    assert (grown.calibration.target, grown.calibration.budget_ms) == (0.9, 20.0)


def test_an_index_run_says_its_target_is_kept(tmp_path):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--recall-target", "0.99"]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "--recall-target 0.99 kept for when the index grows into a compressed" in said
    assert calibration.stored(tmp_path / "db")[0] == 0.99
    again = CliRunner().invoke(app, args[:-2])  # nothing asked: nothing said
    assert again.exit_code == 0 and "kept for" not in again.output


def test_a_search_says_when_its_index_was_never_calibrated_or_is_under_its_image_recall(tmp_path, monkeypatch):
    db = tmp_path / "db"
    synthetic_index(db, n=3000, dim=32)
    reindex(db, FACTORY, recall_target=0.9, text_queries=False)
    saved = json.loads((db / calibration.FILE).read_text())
    args = ["similar", "5", "--db", str(db)]
    measured = CliRunner().invoke(app, args)
    assert measured.exit_code == 0 and "recall" not in measured.stderr, measured.stderr  # (met: nothing to say)
    (db / calibration.FILE).unlink()  # as a reindex cut short leaves it
    never = CliRunner().invoke(app, args)
    said = " ".join(never.stderr.split())
    assert never.exit_code == 0 and "this compressed index's recall has not been measured" in said, said
    assert "`usesearch calibrate` measures it" in said
    short = {**saved, "recall": 0.95, "recall_kinds": {"text": 0.95, "image": 0.5}}  # typed queries met, images not
    (db / calibration.FILE).write_text(json.dumps(short))
    under = CliRunner().invoke(app, args)
    said = " ".join(under.stderr.split())
    assert under.exit_code == 0 and "this index finds ~0.50 of an image query's true top 10 (its target 0.9 is" in said
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from usesearch.indexer.web import create_app

    served_index = SegmentIndex.open(db)  # (a synthetic index: no model of its own; a similar search needs none)
    monkeypatch.setattr(served_index.models, "text", lambda: SimpleNamespace(fingerprint="synthetic"))
    served = TestClient(create_app(served_index)).get("/api/segments/5/similar").json()  # the web app's too
    assert any(note.startswith("this index finds ~0.50 of an image query's") for note in served["notes"]), served


def test_a_reindex_interrupted_while_calibrating_says_its_index_is_rebuilt_but_not_calibrated(tmp_path, monkeypatch):
    """It said "interrupted" alone; the new index then searched uncalibrated."""
    from usesearch.indexer import maintenance

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt

    db = tmp_path / "db"
    synthetic_index(db, n=3000, dim=32)
    monkeypatch.setattr(maintenance, "calibrate_index", cut_short)
    result = CliRunner().invoke(app, ["reindex", "--db", str(db), "--factory", FACTORY])
    said = " ".join(result.stderr.split())
    assert result.exit_code == 130
    assert (
        f"interrupted; the index was rebuilt ({FACTORY}, 3,000 vectors) but not calibrated: "
        f"`usesearch calibrate --db {db}` measures its recall" in said
    )
    assert SegmentIndex.open(db).info.factory == FACTORY  # (rebuilt, as said)


def test_info_says_when_the_index_has_grown_a_quarter_since_its_recall_was_measured(tmp_path):
    db = tmp_path / "db"
    synthetic_index(db, n=3000, dim=32)
    reindex(db, FACTORY, text_queries=False)
    assert "segments now" not in SegmentIndex.open(db).stats()["recall"]
    saved = json.loads((db / calibration.FILE).read_text())
    (db / calibration.FILE).write_text(json.dumps({**saved, "segments": 2000}))  # as if measured before 1,000 more
    line = SegmentIndex.open(db).stats()["recall"]
    assert "(measured at 2000 segments" in line and "; 3,000 segments now (+50% since): its recall may have" in line
    (db / calibration.FILE).write_text(json.dumps({**saved, "segments": 2500}))  # +20%: not said
    assert "segments now" not in SegmentIndex.open(db).stats()["recall"]
