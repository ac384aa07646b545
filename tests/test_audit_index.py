"""Auditing a labelled dataset through the index (``usesearch audit --db``): planted
errors found at the top of their lists in a small index, a kill -9 mid-audit resuming
to the same lists, and the web app's audit view (each list's rule on arrays is
test_audit_rules.py's; verdicts, test_audit_verdicts.py's)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import audit_cli, kill_when, run_python, serving
from usesearch.cli.app import app
from usesearch.indexer import SegmentIndex
from usesearch.indexer.audit import LISTS, AuditConfig, audit_index, leaks, reviews, source


# -- through an index: a small labelled dataset with planted errors (conftest's planted_index) --
@pytest.fixture
def db(planted_db):
    return planted_db


def test_each_planted_kind_is_found_at_the_top_of_its_list(db, planted_index):
    _, planted = planted_index
    lists = audit_cli(db, "-k", "40")
    truth = {
        "swapped": lambda i: i["item"] in planted.errors["swapped"],
        "badly_located": lambda i: i["item"] in planted.errors["badly_located"],
        "outliers": lambda i: i["item"] in planted.errors["outliers"],
        "overlooked": lambda i: i["segment_id"] in planted.errors["overlooked"],
        "leaks": lambda i: bool(set(i["images"]) & planted.copies),
    }
    annotation_errors = ("swapped", "badly_located", "outliers")
    for kind, is_planted in truth.items():
        # Among this kind and the clean items (a mask over background is badly located too, and so on).
        others = set().union(*(planted.errors[k] for k in annotation_errors if k != kind))
        items = [i for i in lists[kind] if kind in ("overlooked", "leaks") or i["item"] not in others]
        planted_here = len(planted.errors[kind])
        assert planted_here >= 2 and items, kind
        top = items[: min(planted_here, 5)]
        # A random order would put about one planted item in ten at the top; the audit puts most there.
        assert sum(map(is_planted, top)) >= 0.5 * len(top), (kind, [is_planted(i) for i in items[:planted_here]])
    assert {i["kind"] for i in lists["leaks"] if set(i["images"]) & planted.copies} == {
        "same content",
        "near duplicate",
    }
    store = SegmentIndex.open(db).store  # the exact leaks the database finds: every annotated photo's hash gives
    every = source.DatasetReader(store).photo_splits(store.image_hashes())[0]
    found = store.contents_across_splits()
    assert leaks.exact_groups(found, every) == leaks.exact_groups(store.image_hashes(every), every) != []
    import csv

    with open(db.parent / "report" / "leaks.csv", newline="") as table:  # a list cell: JSON, whatever its paths hold
        cells = [(row["item"], json.loads(row["paths"]), json.loads(row["images"])) for row in csv.DictReader(table)]
    assert cells == [(i["item"], i["paths"], i["images"]) for i in lists["leaks"]] and cells
    leak_line = next(line for line in audit_cli.output.splitlines() if line.strip().startswith("leaks:"))
    assert leak_line.endswith((".png)", ".jpg)"))  # the first leak names its photo(s), never ", )"
    # Each leak names a photo of its own (one of whole photos of the same content had "image": null).
    assert all(i["image"] in i["paths"] for i in lists["leaks"]) and any(
        i["segment_id"] is None for i in lists["leaks"]
    )
    for kind in LISTS:
        assert (db.parent / "report" / f"{kind}.csv").read_text().startswith("rank,item,score")
        assert (db.parent / "report" / f"{kind}.png").stat().st_size > 1000  # a contact sheet of the tiles
    assert "contact sheets " in audit_cli.output and "drawn grey" not in audit_cli.output
    # --no-sheets says no sheet was drawn (a report folder that is a file: test_output_folders).
    bare_args = ["audit", "--db", str(db), "--report-dir", str(db.parent / "bare"), "--no-sheets"]
    bare = CliRunner().invoke(app, bare_args)
    assert bare.exit_code == 0 and "contact sheets" not in bare.output and not list((db.parent / "bare").glob("*.png"))
    as_json = CliRunner().invoke(app, [*bare_args, "--json", "-k", "40"])  # the lists' heads on stdout alone
    summary = json.loads(as_json.stdout)
    assert set(summary["lists"]) == set(LISTS) and summary["unreadable"] == []
    assert summary["lists"]["swapped"]["top"] == lists["swapped"] and summary["lists"]["leaks"]["found"] >= 2
    assert summary["lists"]["outliers"]["files"] == [str(db.parent / "bare" / f"outliers.{e}") for e in ("json", "csv")]
    gone = Path(lists["swapped"][0]["image"])  # a photo removed since indexing: drawn grey, and said
    gone.rename(gone.with_suffix(".away"))
    try:
        audit_cli(db, "-k", "40")
    finally:
        gone.with_suffix(".away").rename(gone)
    assert (
        "gone, unreadable or changed since indexing, drawn grey" in audit_cli.output
        and f"{gone.name} (gone)" in audit_cli.output
    )
    assert f"`usesearch prune --db {db}` removes them" in " ".join(audit_cli.output.split())
    kept = gone.read_bytes()  # one changed since, its size the same: grey too (its stored masks were drawn over it)
    Image.open(gone).rotate(180).save(gone, format=Image.open(gone).format)
    try:
        audit_cli(db, "-k", "40")
    finally:
        gone.write_bytes(kept)
    assert f"{gone.name} (changed)" in audit_cli.output, audit_cli.output


SLOW_AUDIT = """
import sys, time
from usesearch.indexer.audit import AuditConfig, audit_index, source
reading = source.DatasetReader.segments_of
def slowly(self, image_ids):  # room to be killed between the photo pass's checkpoints
    time.sleep(0.3)
    return reading(self, image_ids)
source.DatasetReader.segments_of = slowly
audit_index(sys.argv[1], config=AuditConfig(batch=7, photo_batch=4))
"""


def checkpoint_phase(db):
    try:
        with np.load(db / "audit" / "checkpoint.npz") as saved:
            meta = json.loads(str(saved["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    return meta["phase"], meta["after"]


def test_a_killed_audit_resumes_to_the_same_lists(db, tmp_path):
    import shutil

    untouched = tmp_path / "untouched"
    shutil.copytree(db, untouched)
    config = AuditConfig(batch=7, photo_batch=4)
    proc = run_python(SLOW_AUDIT, db)
    at = kill_when(proc, lambda: checkpoint_phase(db), lambda p: p is not None and p[0] == "photos" and p[1] > 0, None)
    assert at[0] == "photos" and not (db / "audit" / "lists.json").exists()
    said: list[str] = []
    resumed = audit_index(db, config=config, say=said.append)
    assert any(line.startswith("resuming the audit at its photos pass") for line in said), said
    assert resumed == audit_index(untouched, config=config)  # the lists of an audit never killed
    assert sum(len(v) for v in resumed["lists"].values()) > 50


def test_a_list_says_how_many_it_found_beyond_the_items_it_keeps(db, tmp_path):
    """A list's count of what it found was the length of the list kept (1,000 items at
    most): 1,137 overlooked proposals were said as 1,000 found."""
    import shutil

    wide = tmp_path / "wide"
    shutil.copytree(db, wide)
    short, whole = audit_index(db, config=AuditConfig(keep=3)), audit_index(wide, config=AuditConfig(keep=10**6))
    assert short["found"] == whole["found"] == {kind: len(items) for kind, items in whole["lists"].items()}
    assert all(len(short["lists"][kind]) <= 3 for kind in LISTS) and sum(short["found"].values()) > 5 * len(LISTS)
    audit_cli(db, "-k", "2")
    for kind in LISTS:
        assert f"{kind}: {whole['found'][kind]} found" in " ".join(audit_cli.output.split())  # type: ignore[attr-defined]


def test_an_audit_made_under_older_list_rules_is_made_again(db, monkeypatch):
    """A finished audit's checkpoint, kept across an upgrade that changed what a list
    holds, was shown as it was: swapped still listed annotations their own class wins."""
    from usesearch.indexer.audit import run

    audit_index(db, config=AuditConfig(keep=3))
    said: list[str] = []
    audit_index(db, config=AuditConfig(keep=3), say=said.append)
    assert not any(" pass: " in line for line in said), said  # done: reused
    monkeypatch.setattr(run, "LIST_RULES", run.LIST_RULES + 1)
    audit_index(db, config=AuditConfig(keep=3), say=said.append)
    assert any(line.startswith("annotations pass: ") for line in said), said


def test_photos_are_audited_in_steps_of_bounded_segments_to_the_same_lists(db, tmp_path, monkeypatch):
    """Memory goes with a step's segments (a thousand dense photos took gigabytes): a
    photo step ends where its segments would pass ``batch``; the lists stay the same."""
    import shutil

    steps: list[tuple[int, int]] = []
    reading = source.DatasetReader.segments_of

    def counted(self, image_ids):
        found = reading(self, image_ids)
        steps.append((len(image_ids), len(found.ids)))
        return found

    monkeypatch.setattr(source.DatasetReader, "segments_of", counted)
    wide = tmp_path / "wide"
    shutil.copytree(db, wide)
    unbounded = audit_index(wide, config=AuditConfig(batch=10**6, photo_batch=4))
    assert any(n > 1 and segments > 20 for n, segments in steps)  # photos stepped together past 20 segments
    wide_steps = len(steps)
    steps.clear()
    bounded = audit_index(db, config=AuditConfig(batch=20, photo_batch=4))
    assert {k: v for k, v in bounded.items() if k != "lists"} == {k: v for k, v in unbounded.items() if k != "lists"}
    for name, items in unbounded[
        "lists"
    ].items():  # the same items, scores to float32's rounding (BLAS blocks by shape)
        assert [i["item"] for i in bounded["lists"][name]] == [i["item"] for i in items]
        for got, want in zip(bounded["lists"][name], items):
            assert got == {k: pytest.approx(v, abs=1e-5) if isinstance(v, float) else v for k, v in want.items()}
    assert steps and all(n == 1 or segments <= 20 for n, segments in steps)
    assert len(steps) > wide_steps


def test_a_report_of_one_split_keeps_its_items_ranked_again(db):
    """`audit --split val` was "No such option": a team auditing its validation set read
    every list whole. The audit still ranks the whole dataset; the report keeps one split."""
    whole = audit_cli(db, "-k", "1000", "--no-sheets")
    val = audit_cli(db, "-k", "1000", "--split", "val", "--no-sheets")

    def of_val(kind, item):
        return "val" in item["splits"] if kind in ("overlooked", "leaks") else item["split"] == "val"

    for kind in LISTS:
        assert [i["item"] for i in val[kind]] == [i["item"] for i in whole[kind] if of_val(kind, i)], kind
        assert [i["rank"] for i in val[kind]] == list(range(1, len(val[kind]) + 1))
    assert all(val[kind] for kind in ("swapped", "outliers", "leaks"))  # (each has val items to keep)
    assert sum(map(len, val.values())) < sum(map(len, whole.values()))  # (and train's are left out)
    assert "--split val: the items of val among each list's 1,000 best" in " ".join(audit_cli.output.split())
    typo = CliRunner().invoke(app, ["audit", "--db", str(db), "--split", "Val"])
    said = " ".join(typo.output.split())
    assert typo.exit_code == 2 and "--split 'Val': the dataset's splits are 'train', 'val'; did you mean 'val'?" in said


def test_a_leaks_sheet_draws_both_photos_of_each_leak(db, monkeypatch):
    """The leaks sheet drew one tile a leak, its first photo's: what it duplicated was
    not to be seen, and a same-content leak (no segments matched) was not drawn at all."""
    import usesearch.indexer.audit.report as report

    drawn: dict[str, tuple[list, list]] = {}
    real = report.contact_sheet

    def spy(hits, path, **kwargs):
        drawn[Path(path).stem] = (hits, kwargs["notes"])
        return real(hits, path, **kwargs)

    monkeypatch.setattr(report, "contact_sheet", spy)
    lists = audit_cli(db, "-k", "10")
    hits, notes = drawn["leaks"]
    assert len(hits) == 2 * len(lists["leaks"]) and {i["kind"] for i in lists["leaks"]} == {
        "same content",
        "near duplicate",
    }
    for item, pair in zip(lists["leaks"], zip(hits[::2], hits[1::2])):
        assert [h.image_id for h in pair] == item["images"][:2] and pair[0].rank == pair[1].rank == item["rank"]
    for hit, note in zip(hits, notes):
        assert note.startswith("= ") and note[2:] != Path(hit.image).name
    swaps = drawn["swapped"][1]
    assert swaps and all("->" in note for note in swaps)


# -- the web app's audit view, in a browser ---------------------------------------------------
@pytest.fixture
def audit_server(db):

    from usesearch.indexer import SegmentIndex

    audit_index(db)
    index = SegmentIndex.open(db)
    with serving(index) as url:
        yield url, index
    index.close()


def test_the_audit_view_pages_through_a_list_and_keeps_verdicts(audit_server, db):
    from tests.test_serve_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if CHROMIUM is None:
        pytest.skip("no chromium here: `sh tests/install-services.sh` installs Debian's")
    from playwright.sync_api import sync_playwright

    url, index = audit_server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # bypass_csp: Playwright's own waits evaluate strings; the page itself runs under its CSP.
        page = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/audit#list=badly_located")
        page.wait_for_selector(".audit-item")
        cards = page.locator(".audit-item")
        first = cards.first.get_attribute("data-item")
        assert cards.count() > 1 and page.locator("#list-badly_located.current").count() == 1
        # Masks drawn: the tile of the annotation and that of its best proposal, loaded.
        assert cards.first.locator(".pictures img").count() == 2
        page.wait_for_function(
            "[...document.querySelectorAll('.audit-item img')].slice(0, 2).every(i => i.naturalWidth > 0)"
        )
        cards.first.locator("button[data-verdict=wrong]").click()
        page.wait_for_selector(f".audit-item.wrong[data-item='{first}']")
        assert reviews.verdicts(index.store.engine, "badly_located") == {("badly_located", first): "wrong"}
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "audit-view.png"))
        page.reload()
        page.wait_for_selector(".audit-item")
        assert page.locator(".audit-item").first.get_attribute("data-item") != first  # reviewed: left out
        page.locator("#include-reviewed").check()
        page.wait_for_selector(f".audit-item.wrong[data-item='{first}']")
        page.locator("#list-leaks").click()
        page.wait_for_selector(".audit-item .pictures img[src*='thumbnail']")  # a leak shows its photos
        page.wait_for_function("document.getElementById('status').textContent.startsWith('leaks')")
        browser.close()
    assert errors == []


@pytest.mark.parametrize("step", ["_class_vectors", "_photo_pass", "resolve"])  # model; passes; the lists read
def test_an_index_changed_during_the_audit_gives_no_lists(db, monkeypatch, step):
    """An `index` run committing mid-audit: lists mixing two indexes are refused, not
    written as the current ones."""
    import sqlite3

    from usesearch.errors import UsesearchError
    from usesearch.indexer.audit import run

    real = getattr(run, step)

    def then_a_commit(*args, **kwargs):
        done = real(*args, **kwargs)
        with sqlite3.connect(db / "segments.sqlite") as conn:
            conn.execute("update index_info set generation = generation + 1")
        return done

    monkeypatch.setattr(run, step, then_a_commit)
    with pytest.raises(UsesearchError, match="changed while it was audited"):
        audit_index(db)
    assert not (db / "audit" / "lists.json").exists()
    monkeypatch.undo()
    assert audit_index(db)["lists"]["swapped"]  # run again: afresh, for the index as it now is


def test_lists_of_another_shape_are_said_with_the_command_that_writes_them_again(db):
    """A lists.json edited by hand or written by another version: the audit view's API
    answered 500 with a traceback in the log (or 400, blaming the client, for bad JSON)."""
    from fastapi.testclient import TestClient

    from usesearch.indexer.web import create_app

    audit_index(db, config=AuditConfig(keep=3))
    index = SegmentIndex.open(db)
    client = TestClient(create_app(index), raise_server_exceptions=False)
    assert client.get("/api/audit").status_code == 200 and client.get("/api/audit/swapped").status_code == 200
    lists = db / "audit" / "lists.json"
    for damaged in ("[]", '{"lists": {}}', '{"bad":', json.dumps({"classes": [], "splits": [], "lists": {}})):
        lists.write_text(damaged)
        for route in ("/api/audit", "/api/audit/swapped"):
            answer = client.get(route)
            assert answer.status_code == 404 and "run `usesearch audit --db" in answer.json()["detail"], answer.text
    index.close()
