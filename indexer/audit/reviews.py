"""People's verdicts on audit items, kept in the index's catalog (``AuditReview``):
``ok`` or ``wrong`` per (list, item), so a reviewed item is left out of the next
lists unless asked for, whatever re-runs happen between."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, Table, delete, insert, inspect, select

from usesearch.errors import UsesearchError

from ..records import AuditReview

VERDICTS = ("ok", "wrong")


def mark(engine: Engine, kind: str, item: str, verdict: str | None) -> None:
    """Record (or, with ``verdict`` None, take back) a verdict. The table is made on the
    first one where the index predates it."""
    if verdict is not None and verdict not in VERDICTS:
        raise UsesearchError(f"a verdict is one of {', '.join(VERDICTS)}, not {verdict!r}")
    table = AuditReview.__table__
    assert isinstance(table, Table)
    table.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(delete(AuditReview).where(AuditReview.kind == kind, AuditReview.item == item))
        if verdict is not None:
            conn.execute(
                insert(AuditReview).values(
                    kind=kind, item=item, verdict=verdict, reviewed=dt.datetime.now(dt.timezone.utc)
                )
            )


def verdicts(engine: Engine, kind: str | None = None) -> dict[tuple[str, str], str]:
    """{(list, item): verdict} (of one list, or all); empty where none was ever given."""
    if not inspect(engine).has_table(AuditReview.__tablename__):
        return {}
    query = select(AuditReview.kind, AuditReview.item, AuditReview.verdict)
    if kind is not None:
        query = query.where(AuditReview.kind == kind)
    with engine.connect() as conn:
        return {(k, i): v for k, i, v in conn.execute(query)}
