"""People's verdicts on audit items, kept in the index's catalog (``AuditReview``):
``ok`` or ``wrong`` per (list, item), so a reviewed item is left out of the next
lists unless asked for, whatever re-runs happen between, as long as the item is what
was judged: an annotation relabelled or redrawn since is to be judged again."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, Table, delete, insert, inspect, select
from sqlalchemy.exc import DBAPIError

from usesearch.errors import IndexReadOnlyError, UsesearchError

from ..records import AuditReview

VERDICTS = ("ok", "wrong")


def state_of(kind: str, item: dict) -> str:
    """What a verdict on ``item`` (as the audit's lists hold it) judged: its segment (a
    redrawn mask is embedded anew) and its class (relabelled in place keeps the segment).
    A leak's key says it all: its photos' ids, never reused, new for new content."""
    if kind == "leaks":
        return ""
    return f"{item.get('segment_id')}:{item.get('labelled', item.get('proposed'))}"[:300]


def mark(engine: Engine, kind: str, item: str, verdict: str | None, state: str | None = None) -> None:
    """Record (or, with ``verdict`` None, take back) a verdict on the item as it is now
    (``state``). The table is made on the first one where the index predates it."""
    mark_many(engine, [(kind, item, verdict, state)])


def mark_many(engine: Engine, marks: list[tuple[str, str, str | None, str | None]]) -> None:
    """``mark`` for each ``(kind, item, verdict, state)``, all in one transaction: a
    spreadsheet's verdicts are kept whole or not at all."""
    if not marks:  # (nothing to keep: a read-only catalog is not asked to make the table)
        return
    for _, _, verdict, _ in marks:
        if verdict is not None and verdict not in VERDICTS:
            raise UsesearchError(f"a verdict is one of {', '.join(VERDICTS)}, not {verdict!r}")
    table = AuditReview.__table__
    assert isinstance(table, Table)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        table.create(engine, checkfirst=True)
        with engine.begin() as conn:
            for kind, item, verdict, state in marks:
                conn.execute(delete(AuditReview).where(AuditReview.kind == kind, AuditReview.item == item))
                if verdict is not None:
                    conn.execute(
                        insert(AuditReview).values(kind=kind, item=item, verdict=verdict, reviewed=now, state=state)
                    )
    except DBAPIError as exc:  # (a server's 500, "the index database failed", said nothing)
        # SQLite: "attempt to write a readonly database"; PostgreSQL (SQLSTATE 25006):
        # "cannot execute INSERT in a read-only transaction".
        if "readonly" not in str(exc.orig).lower().replace("-", "").replace(" ", ""):
            raise
        raise IndexReadOnlyError(
            "this index is read-only here: a verdict cannot be kept in it (review a writable copy)"
        ) from None


def verdicts(
    engine: Engine, kind: str | None = None, lists: dict[str, list[dict]] | None = None
) -> dict[tuple[str, str], str]:
    """{(list, item): verdict} (of one list, or all); empty where none was ever given.
    With the audit's ``lists``: those that still hold, the item in them being what was
    judged (a verdict given before states were kept holds)."""
    if not inspect(engine).has_table(AuditReview.__tablename__):
        return {}
    query = select(AuditReview.kind, AuditReview.item, AuditReview.verdict, AuditReview.state)
    if kind is not None:
        query = query.where(AuditReview.kind == kind)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if lists is None:
        return {(k, i): v for k, i, v, _ in rows}
    now = {(k, item["item"]): state_of(k, item) for k, items in lists.items() for item in items}
    return {(k, i): v for k, i, v, state in rows if state is None or now.get((k, i), state) == state}
