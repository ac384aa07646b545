"""Filters as a user writes them: a relative ``--path`` glob matches under any folder
(as the query table shows paths, under their common folder), and a search that finds
nothing because a filter names what the index lacks says so in one line each."""

import json
import re

import pytest
from typer.testing import CliRunner

from tests.helpers import write_photos
from tests.test_coco_index import write_coco
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, SearchFilters, SegmentIndex
from usesearch.indexer.coco_index import index_coco

runner = CliRunner()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    photos = write_photos(root / "photos")  # chelsea and rocket in photos/sub
    coco = write_coco(root / "train.json", photos, ["sub/chelsea.png", "sub/rocket.png", "coffee.png"], 1)
    index_coco([photos], coco, root / "db", IndexOptions(preset="tiny"), split="train")
    return root / "db"


def test_a_relative_path_glob_matches_under_any_folder(db):
    ix = SegmentIndex.open(db)
    relative = ix.query("a cat", k=20, filters=SearchFilters(path="sub/*"))
    absolute = ix.query("a cat", k=20, filters=SearchFilters(path="*/sub/*"))
    assert len(relative) == 4 and [h.segment_id for h in relative] == [h.segment_id for h in absolute]
    assert {h.image.rsplit("/", 2)[1] for h in relative} == {"sub"}
    assert ix.query("a cat", k=5, filters=SearchFilters(path="hub/*")) == []
    ix.close()
    shown = runner.invoke(app, ["query", "a cat", "--db", str(db), "--path", "sub/r*", "--json"])
    assert shown.exit_code == 0 and {h["image"].rsplit("/", 1)[1] for h in json.loads(shown.stdout)} == {"rocket.png"}


def test_a_table_title_says_the_filters_kept_some_segments_out(db):
    """A title of 'top 2 of 6 segments' under --path read as if all 6 had been searched."""
    total = SegmentIndex.open(db)
    ntotal = total.index.ntotal
    total.close()
    filtered = runner.invoke(app, ["query", "a cat", "--db", str(db), "--path", "sub/r*", "--label", "rocket"])
    said = " ".join(filtered.stdout.split())  # (rich wraps a long title)
    assert f"top 2 of the segments where --path 'sub/r*' --label 'rocket' ({ntotal} segments in the index)" in said
    from usesearch.indexer.filters import narrowed_by

    assert narrowed_by(SearchFilters(min_score=0.0)) == "min_score 0.0"  # (it drops negative cosines)
    assert narrowed_by(SearchFilters(min_area=0, per_image=True)) == ""
    whole = runner.invoke(app, ["query", "a cat", "--db", str(db), "-k", "3"])
    assert f"top 3 of {ntotal} segments (" in " ".join(whole.stdout.split())


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--path", "nowhere/*"], "no indexed photo's path matches --path 'nowhere/*' (under "),
        (["--path", "sub"], "; photos under a folder 'sub': --path 'sub/*'"),  # a folder named bare
        (["--path", "./sub/"], "; photos under a folder 'sub': --path 'sub/*'"),
        (["--label", "dog"], "--label 'dog': the index has no such class (it has: cat, cup, rocket)"),
        (["--split", "test"], "--split 'test': the index has no such split (it has: train)"),
        (["--label", "Cat"], "(it has: cat, cup, rocket); did you mean 'cat'?"),  # (the list is cut at 20)
        (["--label", "rockt"], "(it has: cat, cup, rocket); did you mean 'rocket'?"),
        (["--split", "Train"], "(it has: train); did you mean 'train'?"),
        (["--source", "proposal"], "--source proposal: the index holds no proposal segments (a masker run makes"),
    ],
)
def test_a_filter_naming_what_the_index_lacks_is_said(db, flags, said):
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--json", *flags])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_rerank_past_what_a_search_re_scores_is_refused_as_the_web_api_refuses_it(db):
    """`--rerank 900000000` was taken and silently cut to 32,768; the web API refused it."""
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--rerank", "900000000"])
    assert result.exit_code == 2 and "--rerank must be at most 32768 (a search re-scores no more)" in result.output
    assert runner.invoke(app, ["query", "a cat", "--db", str(db), "--rerank", "32768"]).exit_code == 0


def test_an_effort_that_changes_nothing_is_noted_by_its_flags(db):
    """The notes are built in indexer/filters.py for the CLI and the web API: here, the CLI's spelling."""
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--nprobe", "3", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)
    assert result.stderr.strip() == "--nprobe: this index is exact (every segment scored): nothing to change"


def test_a_filter_the_index_has_says_nothing_more(db):
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--json", "--label", "cat", "--min-score", "0.99"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    # Nothing of the label it has; only how far off --min-score was.
    assert result.stderr.startswith("no hit scores at least --min-score 0.99 (the best found without it scores ")
    assert len(result.stderr.splitlines()) == 1 and "--label" not in result.stderr


TRICKY_PATHS = [
    "/a/2024/x.jpg",
    "/b/2024/Y.JPG",
    "/a/2024x/z.jpg",
    "/c/50%_off/p.jpg",
    "/c/50a_off/q.jpg",
    "/c/50%Xoff/r.jpg",
    "/d/[ab]/s.jpg",
    "/d/a/t.jpg",
    "/e/2O24/u.jpg",
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    "glob",
    ["2024/*", "*/2024*", "*.JPG", "*.jpg", "50%_off/*", "50?_off/*", "*[ab]/*", "[[]ab]/*", "*/a/*", "*", "u.jpg"],
)
def test_a_glob_without_a_prefix_matches_what_fnmatch_matches(tmp_path, request, backend, glob):
    """A glob with no literal prefix has its longest literal part found by the database
    first (LIKE: maybe case-blind, ``%`` and ``_`` its own wildcards): the result must
    still be exactly fnmatch's, case and all."""
    import fnmatch

    from sqlalchemy import event, insert

    from usesearch.indexer.folder import db_url_for
    from usesearch.indexer.lookups import path_glob
    from usesearch.indexer.records import ImageRecord
    from usesearch.indexer.store import Store

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else db_url_for(tmp_path, None)
    store = Store(url, folder=tmp_path)
    rows = [
        {
            "id": i + 1,
            "path": p,
            "fs_path": p.encode(),
            "sha256": f"{i:064x}",
            "width": 8,
            "height": 8,
            "status": "done",
        }
        for i, p in enumerate(TRICKY_PATHS)
    ]
    with store.sessions.begin() as s:
        s.execute(insert(ImageRecord), rows)
    sent: list = []
    event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, sql, params, *a: sent.append(params))
    expected = {i + 1 for i, p in enumerate(TRICKY_PATHS) if fnmatch.fnmatchcase(p, path_glob(glob))}
    assert store.image_ids_matching(glob) == expected
    if glob == "2024/*":  # its literal part went to the database
        assert any("/2024/" in str(params) for params in sent), sent
    store.close()


def test_a_search_of_an_index_with_no_segment_says_so(tmp_path):
    """An index whose runs committed no segment yet answered every search with an empty
    list, and nothing said why (a filter's note would only have misled). The run's
    failure line named its photo twice."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.png").write_bytes(b"\x89PNG broken")  # an index made, nothing in it
    made = runner.invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny"])
    assert made.exit_code == 3 and "0 images indexed, 0 skipped, 1 failed" in made.output, made.output
    # (the failure's path said once: its reason named it again)
    line = f"failed: {photos / 'broken.png'}: ImageReadError: cannot read image: not a recognised image format"
    assert "".join(line.split()) in "".join(made.output.split()), made.output
    result = runner.invoke(app, ["query", "a cat", "--db", str(tmp_path / "db"), "--json", "--path", "x/*"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert result.stderr.strip() == "the index holds no segment yet (`usesearch index` adds them)"


def test_a_min_area_no_segment_reaches_is_said_with_the_largest(db):
    # An empty table and nothing on stderr: every other filter that kept all out said why.
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--json", "--min-area", "999999999"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    largest = re.search(r"no segment covers --min-area 999999999 pixels \(the largest covers (\d+)\)", result.stderr)
    assert largest and int(largest[1]) > 0, result.stderr
    found = runner.invoke(app, ["query", "a cat", "--db", str(db), "--json", "--min-area", largest[1]])
    areas = {hit["area"] for hit in json.loads(found.stdout)}
    assert found.exit_code == 0 and areas == {int(largest[1])} and not found.stderr  # (the largest: found)


def test_a_search_with_no_hit_prints_its_title_without_an_empty_table(db):
    """An empty table's header and border, and its "paths under" caption, said nothing the
    title and the note on stderr do not."""
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--min-area", "999999999"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert said.startswith("'a cat': top 0 of the segments where --min-area 999999999 ("), said
    assert "rank" not in said and "paths under" not in said and "━" not in said, said
    assert "no segment covers --min-area 999999999 pixels" in result.stderr


def test_an_empty_path_glob_is_refused_as_an_empty_label_is(db):
    """`--path "$DIR"` with DIR unset searched every photo, as if no --path were given."""
    result = runner.invoke(app, ["query", "a cat", "--db", str(db), "--path", ""])
    assert result.exit_code == 2 and "--path" in result.output and "is empty" in result.output, result.output
    assert runner.invoke(app, ["query", "a cat", "--db", str(db), "--label", ""]).exit_code != 0
