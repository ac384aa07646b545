"""The catalog's locks on PostgreSQL: a writer's lock taken again after the server
restarts, or lost to another run and said so; a retake while the server is still down
tried again at the next write; and the tables of a new database made by one first run
at a time (two raced, and the loser failed in the server's words)."""

import shutil
import threading

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import OPTS, write_photos
from usesearch.errors import CatalogLockedError
from usesearch.indexer import IndexOptions, index_paths

NAMES = ("astronaut", "chelsea")


def test_a_writer_takes_its_catalog_lock_again_after_the_server_restarts(tmp_path, pg_url, postgres_server):
    from usesearch.indexer.writer import Writer

    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "a", IndexOptions(**OPTS, db_url=pg_url))
    with Writer(tmp_path / "a", IndexOptions(db_url=pg_url), None) as writer:
        postgres_server.restart()  # the lock ended with its session
        writer.store.retrying(lambda: writer.store.generation())  # the writer's next write takes it again
        shutil.copytree(tmp_path / "a", tmp_path / "b")  # the index's folder copied: its id, not its lock
        with pytest.raises(CatalogLockedError):
            index_paths([photos], tmp_path / "b", IndexOptions(**OPTS, db_url=pg_url))


def test_two_first_runs_on_a_new_database_make_its_tables_one_after_the_other(tmp_path, pg_url, caplog):
    """Both ran CREATE TABLE at once, and the second failed in the server's words
    ("duplicate key value violates unique constraint pg_type_typname_nsp_index"),
    before the writer's lock could refuse it in ours. Each writable open makes the
    tables under one lock, said once while it waits; neither fails."""
    import logging

    from sqlalchemy import inspect

    from usesearch.indexer import identity
    from usesearch.indexer.store import Store

    engine = create_engine(pg_url)
    opened: list = []

    def first_run(folder):
        try:
            opened.append(Store(pg_url, folder=tmp_path / folder))
        except Exception as exc:  # noqa: BLE001 - the failure the test looks for
            opened.append(exc)

    with caplog.at_level(logging.WARNING, logger="usesearch"), engine.connect() as holder:
        holder.execute(text("select pg_advisory_lock(:key)"), {"key": identity.SCHEMA_KEY})  # another process's
        holder.commit()
        runs = [threading.Thread(target=first_run, args=(name,)) for name in ("a", "b")]
        for run in runs:
            run.start()
        for run in runs:
            run.join(3)
        assert all(run.is_alive() for run in runs) and not opened  # both waiting, nothing made
        assert inspect(engine).get_table_names() == []
        holder.execute(text("select pg_advisory_unlock(:key)"), {"key": identity.SCHEMA_KEY})
        holder.commit()
        for run in runs:
            run.join(60)
    assert len(opened) == 2 and all(isinstance(store, Store) for store in opened), opened
    assert "index_info" in inspect(engine).get_table_names()
    assert any("waiting for another usesearch process making" in r.getMessage() for r in caplog.records)
    for store in opened:
        store.close()
    engine.dispose()


def test_a_writer_whose_lock_another_took_after_a_restart_says_it_stopped_mid_way(tmp_path, pg_url, postgres_server):
    """It said "another indexer is writing ...; wait for it to finish", as a run refused at
    its start, of a run that had committed photos and then stopped."""
    import shutil

    from usesearch.errors import CatalogLockedError
    from usesearch.indexer.writer import Writer

    index_paths([write_photos(tmp_path / "photos", NAMES[:1])], tmp_path / "a", IndexOptions(**OPTS, db_url=pg_url))
    with Writer(tmp_path / "a", IndexOptions(db_url=pg_url), None) as first:
        # The same index's folder, its id and its last writer's token too (copied before, it is refused as behind).
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        postgres_server.restart()  # the lock ended with its session
        with Writer(tmp_path / "b", IndexOptions(db_url=pg_url), None):  # another run takes it meanwhile
            with pytest.raises(
                CatalogLockedError, match="another indexer is writing.*this run lost its database session"
            ):
                first.store.retrying(lambda: first.store.generation())  # the first run's next write


def test_a_lock_retaken_while_the_server_is_still_down_is_tried_again_at_the_next_write(monkeypatch):
    """The store dropped the dead lock's connection before retaking it: where the retake
    failed (the server still down), the next write found no lock to check and went on
    without one."""
    from sqlalchemy.exc import OperationalError

    from usesearch.indexer import identity

    class Dead:
        def exec_driver_sql(self, sql):
            raise OperationalError(sql, {}, Exception("server closed the connection"))

        def close(self):
            pass

    tries = []

    def lock_catalog(store):
        tries.append(store)
        if len(tries) == 1:
            raise OperationalError("select pg_try_advisory_lock", {}, Exception("server is down"))
        return "a new lock"

    monkeypatch.setattr(identity, "lock_catalog", lock_catalog)
    dead = Dead()
    with pytest.raises(OperationalError):
        identity.kept_catalog_lock("store", dead)  # the caller keeps `dead` and retries the write
    assert identity.kept_catalog_lock("store", dead) == "a new lock" and len(tries) == 2
    assert identity.kept_catalog_lock("store", None) is None  # SQLite: no lock to keep
