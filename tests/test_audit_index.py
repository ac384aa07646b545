"""Auditing a labelled dataset through the index (``usesearch audit --db``): each list's
rule on arrays, then planted errors found at the top of their lists in a small
index, a kill -9 mid-audit resuming to the same lists, and reviews surviving re-runs."""

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import kill_when, run_python, serving
from usesearch.cli.app import app
from usesearch.indexer import SegmentIndex
from usesearch.indexer.audit import LISTS, AuditConfig, audit_index, leaks, reviews, scores, source
from usesearch.indexer.audit.planted import PlantedConfig, write_planted
from usesearch.indexer.audit.ranked import Ranked
from usesearch.masks import rle


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def box(y0, x0, y1, x1, hw=(40, 40)):
    mask = np.zeros(hw, bool)
    mask[y0:y1, x0:x1] = True
    return rle.encode(mask)


# -- the rules, on arrays ------------------------------------------------------------------
def test_swapped_margin_is_positive_only_where_another_class_wins():
    classes = np.eye(3, 8, dtype=np.float32)
    e = unit([[1, 0.1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]])
    margin, preferred, p_label, p_preferred = scores.swapped(e, np.array([0, 2]), classes)
    assert np.isnan(margin[0]) and margin[1] > 0  # one the model agrees with is no suspect: not listed
    assert preferred.tolist() == [1, 1] and p_preferred[1] > p_label[1]


def test_a_dataset_of_one_class_has_nothing_swapped():
    """With one class no other can be preferred: no margin to rank (each annotation was
    listed as swapped with its own class), and the task's margin says nothing is preferred."""
    from usesearch.tasks.audit import label_margins

    e = np.eye(3, 4, dtype=np.float32)
    margin, preferred, p_label, _ = scores.swapped(e, np.zeros(3, np.int64), np.eye(1, 4, dtype=np.float32))
    assert np.isnan(margin).all() and (preferred == 0).all() and np.allclose(p_label, 1)
    margins, others = label_margins(np.ones((2, 1), np.float32), np.zeros(2, np.int64))
    assert margins.tolist() == [-1.0, -1.0] and others.tolist() == [0, 0]


def test_swapped_hears_the_datasets_own_classes_where_the_text_says_nothing():
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(2, 8)))
    e = unit(np.repeat(centres, 5, 0) + 0.05 * rng.normal(size=(10, 8)))
    labels = np.repeat([0, 1], 5)
    labels[0] = 1  # a class-0 look-alike labelled 1
    sums = np.zeros((2, 8))
    np.add.at(sums, labels, e)
    silent = np.zeros((2, 8), np.float32)  # uniform text probabilities: no opinion
    assert np.isnan(scores.swapped(e, labels, silent)[0]).all()  # no class wins: none listed
    margin, preferred, _, _ = scores.swapped(e, labels, silent, sums, np.bincount(labels))
    assert margin[0] > 0.3 and preferred[0] == 0 and np.isnan(margin[1:]).all()


def test_centroid_distance_leaves_the_annotation_out_of_its_class():
    e = unit([[1, 0], [1, 0.05], [0, 1], [1, 0]])
    labels = np.array([0, 0, 0, 1])
    sums = np.zeros((2, 2))
    np.add.at(sums, labels, e)
    counts = np.bincount(labels, minlength=2)
    d = scores.centroid_distances(e, labels, sums, counts)
    assert d[2] > 0.9 > 0.4 > d[0]  # the odd one out, against the other two
    assert d[0] == pytest.approx(1 - e[0] @ unit([e[1] + e[2]])[0], abs=1e-5)  # itself left out
    assert np.isnan(d[3])  # alone in its class: nothing to compare with


def test_overlooked_needs_no_annotation_around_and_a_class_it_resembles():
    annotation = box(0, 0, 20, 20)
    proposals = [box(2, 2, 18, 18), box(25, 25, 38, 38), box(22, 0, 38, 15)]  # inside; free; free
    covered = scores.coverage(scores.overlaps(proposals, [annotation])[0])
    assert covered[0] == 1 and covered[1] == 0
    protos = unit([[1, 0, 0], [0, 1, 0]])
    score, proposed = scores.overlooked(unit([[1, 0, 0], [0, 1, 0.1], [0, 0.2, 1]]) @ protos.T, covered)
    assert np.isnan(score[0]) and score[1] > score[2] and proposed[1] == 1


def test_badly_located_compares_with_the_same_class_proposal():
    truth, shifted = box(0, 0, 20, 20), box(8, 8, 28, 28)
    neighbour = box(8, 8, 28, 28)  # another class's object where the shifted mask lies
    _, ious = scores.overlaps([box(0, 0, 20, 20), neighbour], [truth, shifted])
    assert ious[1, 1] == 1 and ious[1, 0] == pytest.approx(144 / 656)  # the IoU, from the shares and areas
    located, best = scores.badly_located(ious, np.array([0, 0]), [0, 1])
    assert located[0] == pytest.approx(0) and located[1] > 0.5 and best.tolist() == [0, 0]
    alone, _ = scores.badly_located(np.zeros((1, 0)), np.array([0]), [])
    assert np.isnan(alone[0])


def test_ranked_keeps_the_best_whatever_the_batches():
    rng = np.random.default_rng(0)
    values, keys = rng.random(100).round(1), np.arange(100)  # many ties: broken by key
    whole = Ranked(10)
    whole.push(score=values, key=keys)
    pieces = Ranked(10)
    for lo in range(0, 100, 7):
        pieces.push(score=values[lo : lo + 7], key=keys[lo : lo + 7])
    assert [r["key"] for r in whole.rows()] == [r["key"] for r in pieces.rows()]
    assert whole.rows()[0]["score"] == values.max()
    restored = Ranked.from_state(10, "x", whole.state("x"))
    assert restored.rows() == whole.rows()


def test_the_inverted_file_of_a_large_base_finds_the_near_duplicates_exact_search_finds():
    """Past ``EXACT_UP_TO`` base rows the near-duplicates come from an inverted file: the
    pairs it gives are those of exact search."""
    rng = np.random.default_rng(2)
    centers = unit(rng.normal(size=(50, 64)))
    base = unit(centers[rng.integers(0, 50, 20_000)] + 0.15 * rng.normal(size=(20_000, 64)))
    query = unit(centers[rng.integers(0, 50, 2_000)] + 0.15 * rng.normal(size=(2_000, 64)))
    copied = rng.choice(len(base), 200, replace=False)
    query[:200] = unit(base[copied] + 0.02 * rng.normal(size=(200, 64)))  # cosine ~0.99 with their originals
    base_ids, query_ids = np.arange(1, 20_001), np.arange(100_001, 102_001)
    ask = (base_ids, np.ones(20_000, np.int64), query, query_ids, np.zeros(2_000, np.int64))
    exact = leaks.base_index(64, 10)  # (a base this small is searched exactly)
    exact.add_with_ids(base, base_ids)
    index = leaks.base_index(64, len(base))
    assert not index.is_trained and 0 < leaks.training_rows(len(base)) < len(base)
    index.train(base[rng.permutation(len(base))[: leaks.training_rows(len(base))]])
    index.add_with_ids(base, base_ids)
    truth, found = leaks.near_pairs(exact, *ask), leaks.near_pairs(index, *ask)
    assert len(truth) >= 200 and set(map(tuple, found[:, :2].tolist())) == set(map(tuple, truth[:, :2].tolist()))


@pytest.mark.parametrize("rows", [5_001, 20_000, 500_000, 2_000_000])
def test_the_inverted_file_trains_on_what_faiss_asks_for(rows):
    """At least 39 rows a list, faiss's minimum: with 100,000 rows past 400,000 base rows,
    every archive-scale audit printed faiss's "WARNING clustering ... please provide"."""
    lists = faiss.extract_index_ivf(leaks.base_index(8, rows)).nlist
    assert 39 * lists <= leaks.training_rows(rows) <= rows


def test_leaks_exact_and_near_duplicates_across_splits_grouped():
    splits = {1: {"train"}, 2: {"val"}, 3: {"train", "val"}, 4: {"val"}}
    exact = leaks.exact_groups({1: "a", 2: "a", 3: "b", 4: "c"}, splits)
    assert [g["images"] for g in exact] == [[1, 2], [3]]
    rng = np.random.default_rng(1)
    train = unit(rng.normal(size=(6, 16)))
    val = unit(np.vstack([train[:2] + 0.01 * rng.normal(size=(2, 16)), rng.normal(size=(2, 16))]))
    index = leaks.base_index(16, 4)
    val_ids = np.arange(101, 105)
    index.add_with_ids(val, val_ids)
    pairs = leaks.near_pairs(index, val_ids, np.ones(4, np.int64), train, np.arange(1, 7), np.zeros(6, np.int64))
    assert sorted(pairs[:, :2].astype(int).tolist()) == [[1, 101], [2, 102]]
    segment_image = {1: 10, 2: 10, 101: 20, 102: 20}
    same_places = {1: (0, 0, 0.5, 0.5), 2: (0.5, 0.5, 0.4, 0.4), 101: (0, 0, 0.5, 0.5), 102: (0.5, 0.5, 0.4, 0.4)}
    groups = leaks.near_groups(pairs, segment_image, same_places, {10: 2, 20: 2}, {10: {"train"}, 20: {"val"}})
    assert [g["images"] for g in groups] == [[10, 20]] and groups[0]["score"] > 0.97
    # The same objects elsewhere in the photo, or one of three matched: a weaker leak.
    moved = {**same_places, 101: (0.5, 0, 0.5, 0.5)}
    assert leaks.near_groups(pairs, segment_image, moved, {10: 2, 20: 2}, {}, min_score=0)[0]["score"] < 0.55
    weak = leaks.near_groups(pairs, segment_image, same_places, {10: 6, 20: 6}, {}, min_score=0)
    assert weak[0]["score"] < 0.35
    assert leaks.near_groups(pairs, segment_image, same_places, {10: 6, 20: 6}, {}) == []  # below PAIR_MIN_SCORE


# -- through an index: a small labelled dataset with planted errors ----------------------------
CONFIG = PlantedConfig(photos=60, seed=3)


@pytest.fixture(scope="module")
def planted_index(trained_tiny_head, tmp_path_factory):
    """A planted world indexed with the trained tiny head (annotations and proposals)."""
    import usesearch

    head, _ = trained_tiny_head
    root = tmp_path_factory.mktemp("planted")
    planted, _ = write_planted(root / "db", root / "photos", usesearch.load_model(head), CONFIG, head)
    return root / "db", planted


@pytest.fixture
def db(planted_index, tmp_path):
    """A copy of the planted index of one's own (audits write into the folder and catalog)."""
    import shutil

    shutil.copytree(planted_index[0], tmp_path / "db")
    return tmp_path / "db"


def audit_cli(db, *more):
    result = CliRunner().invoke(app, ["audit", "--db", str(db), "--report-dir", str(db.parent / "report"), *more])
    assert result.exit_code == 0, result.output
    audit_cli.output = result.output  # type: ignore[attr-defined]
    return {kind: json.loads((db.parent / "report" / f"{kind}.json").read_text()) for kind in LISTS}


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
    leak_line = next(line for line in audit_cli.output.splitlines() if line.strip().startswith("leaks:"))
    assert leak_line.endswith((".png)", ".jpg)"))  # the first leak names its photo(s), never ", )"
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
    assert "could not be read or changed, drawn grey" in audit_cli.output and gone.name in audit_cli.output
    assert f"`usesearch prune --db {db}` removes them" in " ".join(audit_cli.output.split())


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


def test_photo_steps_end_where_their_segments_pass_the_batch():
    assert source.groups_of_most([1, 2, 3, 4, 5], [3, 3, 9, 1, 1], 6) == [[1, 2], [3], [4, 5]]
    assert source.groups_of_most([], [], 6) == []


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


def test_the_planted_truth_saved_for_reuse_reads_back_equal_without_pickle(tmp_path):
    from usesearch.indexer.audit.planted import Planted, load_truth, save_truth

    planted = Planted(annotations={"train:1", "val:2"}, proposals={7, 9}, val_photos={2}, copies={3})
    planted.errors["swapped"].add("train:1")
    planted.errors["overlooked"].add(9)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    world = {1: (rgb, [(5, 0, "train")], [7, 9])}
    save_truth(tmp_path / "truth.npz", planted, world)
    again, world_again = load_truth(tmp_path / "truth.npz")
    assert again == planted
    assert list(world_again) == [1] and np.array_equal(world_again[1][0], rgb)
    assert world_again[1][1:] == ([(5, 0, "train")], [7, 9])


@pytest.mark.parametrize("step", ["_class_vectors", "_photo_pass"])  # while the model loads; mid-passes
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


def test_a_pair_found_from_both_sides_is_kept_once_at_its_best_cosine():
    pairs = np.array([[1, 9, 0.98], [2, 5, 0.99], [1, 9, 0.985], [1, 8, 0.97]])
    assert leaks.unique_pairs(pairs).tolist() == [[1, 8, 0.97], [1, 9, 0.985], [2, 5, 0.99]]


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
