"""A photo whose access is refused is not gone: a folder's permissions (chmod 000 on a
subtree) or a file's are given back by a chmod, so `prune` keeps its segments unless
--force, and `index --prune` keeps those its run just kept. Tests run as root, whom no
permission refuses: the refusals are made by wrapping the calls that meet them."""

import errno
import json
import os

from typer.testing import CliRunner

from tests.helpers import OPTS, segment_table, write_photos
from usesearch.cli.app import app
from usesearch.indexer import IndexOptions, index_paths

runner = CliRunner()


def refuse_under(monkeypatch, folder, *calls):
    """``os.<call>`` of a path under ``folder`` (or of ``folder`` itself, for a file
    or for scandir) refused as a non-root user's would be: EACCES."""
    inside = os.fsencode(str(folder))
    whole = not os.path.isdir(folder)

    def wrap(call):
        real = getattr(os, call)

        def refused(path, *args, **kwargs):
            raw = os.fsencode(path) if isinstance(path, (str, bytes)) else b""
            if raw.startswith(inside + b"/") or (raw == inside and (whole or call == "scandir")):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(raw))
            return real(path, *args, **kwargs)

        return refused

    for call in calls:
        monkeypatch.setattr(os, call, wrap(call))


def said(result) -> str:
    return " ".join(result.output.split())


def test_a_folder_whose_access_is_refused_keeps_its_photos_until_prune_is_forced(tmp_path, monkeypatch):
    """`chmod 000 photos/sub` then `prune` removed sub's photos ("cannot be reached
    (Permission denied)") with no --force: the refusal kept for an unmounted disk
    did not apply, since the other photos were there."""
    photos = write_photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    before = segment_table(db)
    with monkeypatch.context() as m:
        refuse_under(m, photos / "sub", "stat")
        planned = runner.invoke(app, ["prune", "--db", str(db), "--dry-run"])
        assert planned.exit_code == 0 and "dry run: 0 of 4 images would be removed" in said(planned), said(planned)
        assert "kept 2 photos whose file cannot be read now (" in said(planned)
        assert "sub/chelsea.png: access refused (Permission denied)" in said(planned)
        kept = runner.invoke(app, ["prune", "--db", str(db)])
        assert kept.exit_code == 0 and "finished: 0 images removed" in said(kept), said(kept)
        assert f"give access back, or `usesearch prune --db {db} --force` removes them" in said(kept)
        assert segment_table(db) == before
        scoped = runner.invoke(app, ["prune", str(photos / "sub"), "--db", str(db), "--dry-run"])
        assert f"`usesearch prune {photos / 'sub'} --db {db} --force` removes them" in said(scoped)  # (its scope)
        info = json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).output)  # (held: counted apart)
        assert (info["files_gone"], info["files_held"]) == (0, 2), info
        forced = runner.invoke(app, ["prune", "--db", str(db), "--force"])
        assert forced.exit_code == 0 and "finished: 2 images removed" in said(forced), said(forced)
        assert "cannot be read now" not in said(forced)
    assert {name for name, *_ in segment_table(db)} == {"astronaut.png", "coffee.png"}


def test_index_prune_keeps_a_photo_its_run_just_kept_failing(tmp_path, monkeypatch):
    """`chmod 000 photo.png; index --prune` said "failed: …: PermissionError … (indexed
    before: its segments are kept)" after "pruned 1 image whose files are gone": its
    segments were gone, and no failure was kept."""
    photos = write_photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    before = segment_table(db)
    locked = photos / "coffee.png"
    os.utime(locked, (1, 1))  # changed since: read again (an unchanged file is skipped unread)
    with monkeypatch.context() as m:
        refuse_under(m, locked, "open")  # (the read's)
        m.setattr(os, "access", lambda path, mode, **_: os.fsencode(path) != os.fsencode(str(locked)))
        result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--preset", "tiny", "--prune"])
    assert result.exit_code == 0 and "pruned 0 images whose files are gone" in said(result), said(result)
    assert "coffee.png: PermissionError: Permission denied (indexed before: its segments are kept)" in said(result)
    assert segment_table(db) == before
    info = json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).output)
    assert info["images_failing_kept"] == 1 and info["files_gone"] == 0, info


def test_a_failure_recorded_at_a_folder_that_lists_now_is_cleared_by_the_run_that_walks_it(tmp_path, monkeypatch):
    """A folder the walk could not list is recorded as a failure at its path; once it
    lists and its photos are indexed, the record stayed: `failures` listed it and
    `info` counted it until a `prune` (which, for a record no run walked since, still
    takes it back)."""
    photos = write_photos(tmp_path / "photos")
    db = tmp_path / "db"
    with monkeypatch.context() as m:
        refuse_under(m, photos / "sub", "scandir")
        assert index_paths([photos], db, IndexOptions(**OPTS)).failed == 1
    planned = runner.invoke(app, ["prune", "--db", str(db), "--dry-run"])  # (before a run walks it: prune's)
    assert "sub (a folder that lists now (the next index run walks it))" in said(planned)
    assert index_paths([photos], db, IndexOptions(**OPTS)).done == 2  # sub's photos, once it lists
    info = json.loads(runner.invoke(app, ["info", "--db", str(db), "--json"]).output)
    assert info["images_failed"] == 0 and info["images_done"] == 4, info
    assert "no file failed to index" in said(runner.invoke(app, ["failures", "--db", str(db)]))


def test_a_kept_failure_whose_read_meets_an_io_error_is_held_not_pruned(tmp_path, monkeypatch):
    """A photo failing since indexed is read again by prune: a read that met EIO (a flaky
    disk: stat fine, the read not) was "failing since indexed" and went with its segments."""
    import usesearch.indexer.leftovers as leftovers

    photos = write_photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_paths([photos], db, IndexOptions(**OPTS))
    (photos / "coffee.png").write_bytes(b"garbage, not a picture any more\n")  # corrupt: a kept failure
    assert index_paths([photos], db, IndexOptions(**OPTS)).failed == 1
    before = segment_table(db)

    def flaky(fs_path, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(leftovers, "read_bytes", flaky)
        kept = runner.invoke(app, ["prune", "--db", str(db)])
    assert kept.exit_code == 0 and "finished: 0 images removed" in said(kept), said(kept)
    assert "coffee.png: access refused (Input/output error)" in said(kept)
    assert segment_table(db) == before
    gone = runner.invoke(app, ["prune", "--db", str(db)])  # read whole again: still corrupt, so it goes
    assert gone.exit_code == 0 and "finished: 1 image removed" in said(gone), said(gone)
