"""The audit's photo pass on SQLite: the query that picks the next 1,000 annotated
photos past the last image id, with an index on the source alone (as before) and
on (source, image_id) (now). On a bare segments table of 10 annotations and 10
proposals a photo, in photo order; the query is the one the audit runs
(``indexer/audit/source.py: annotated_photos``).

    python benchmarks/audit_photo_pass.py [--photos 10000,40000,160000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

from sqlalchemy.dialects import sqlite

from usesearch.indexer.audit.source import annotated_photos


def whole_pass(con: sqlite3.Connection, batch: int) -> tuple[int, float]:
    start, after, batches = time.perf_counter(), 0, 0
    while True:
        sql = str(
            annotated_photos(after, batch).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
        )
        rows = con.execute(sql).fetchall()
        if not rows:
            return batches, time.perf_counter() - start
        after, batches = rows[-1][0], batches + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="10000,40000,160000")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    filler = "x" * 120  # an RLE's worth of row
    for n in map(int, args.photos.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            con = sqlite3.connect(os.path.join(folder, "segments.sqlite"))
            con.execute(
                "create table segments (id integer primary key autoincrement, image_id integer, source varchar(16), "
                "category varchar(256), rle_counts text)"
            )
            rows = (
                (p, "annotation" if j < 10 else "proposal", "cat" if j < 10 else None, filler)
                for p in range(1, n + 1)
                for j in range(20)
            )
            con.executemany("insert into segments (image_id, source, category, rle_counts) values (?,?,?,?)", rows)
            con.execute("create index ix_segments_image_id on segments (image_id)")
            con.execute("create index ix_segments_source on segments (source)")
            con.commit()
            before = whole_pass(con, args.batch)
            con.execute("drop index ix_segments_source")
            con.execute("create index ix_segments_source_image on segments (source, image_id)")
            con.commit()
            now = whole_pass(con, args.batch)
            con.close()
        print(
            f"{n} photos, {10 * n} annotations, {before[0]} batches: index on source {before[1]:.2f} s, "
            f"on (source, image_id) {now[1]:.2f} s"
        )


if __name__ == "__main__":
    main()
