"""The audit view's routes: the lists the last ``usesearch audit`` of this index wrote
(``DIR/audit/lists.json``), a page at a time, and people's verdicts on their items,
stored in the index's catalog (``audit.reviews``). A reviewed item is left out of the
pages unless asked for, so each visit shows what is left to judge."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from usesearch.errors import AuditOutdatedError, NotFoundError

from ..audit import LISTS, load_lists, reviews
from ..folder import index_flags
from ..search import SegmentIndex

MAX_PAGE = 96


class Verdict(BaseModel):
    item: str = Field(max_length=512, description="The item's key, as the list gives it.")
    verdict: Literal["ok", "wrong"] | None = Field(description="ok, wrong, or null to take a verdict back.")


def add_audit_routes(app: FastAPI, index: SegmentIndex) -> None:
    def lists() -> dict:
        found = load_lists(index.db_dir, index.store.url)
        if found is None:
            flags = index_flags(index.db_dir, index.store.url)
            raise NotFoundError(f"this index has not been audited yet: run `usesearch audit {flags}`")
        return found

    def stale(found: dict) -> str | None:
        """A note where the index changed since the lists were made (an `index --coco` of
        an edited file, a prune): their items may be relabelled, redrawn or gone."""
        if found.get("generation") in (None, index.store.generation()):
            return None
        flags = index_flags(index.db_dir, index.store.url)
        return f"the index changed since this audit: run `usesearch audit {flags}` again for lists of it as it is"

    def kind_of(kind: str) -> str:
        if kind not in LISTS:
            raise NotFoundError(f"no audit list {kind!r}; the lists are {', '.join(LISTS)}")
        return kind

    @app.get("/api/audit", tags=["audit"])
    def audit_summary() -> dict[str, Any]:
        """What the last audit found: each list's items (``total``), and how many of them are reviewed;
        ``stale``: a note where the index changed since (else null)."""
        found = lists()
        verdicts = reviews.verdicts(index.store.engine, lists=found["lists"])
        return {
            "classes": found["classes"],
            "splits": found["splits"],
            "stale": stale(found),
            "lists": {
                kind: {
                    "total": len(items),  # (a page's ``total``; its ``items`` is the page's list)
                    "reviewed": sum(1 for i in items if (kind, i["item"]) in verdicts),
                }
                for kind, items in found["lists"].items()
            },
        }

    @app.get("/api/audit/{kind}", tags=["audit"])
    def audit_page(
        kind: str,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 24,
        include_reviewed: bool = False,
    ) -> dict[str, Any]:
        """A page of one list, best first: each item with its verdict (null: not reviewed);
        reviewed items are left out unless ``include_reviewed``."""
        kind = kind_of(kind)  # an unknown list said as such, audited or not
        found = lists()
        items = found["lists"][kind]
        verdicts = reviews.verdicts(index.store.engine, kind, lists={kind: items})
        if not include_reviewed:
            items = [i for i in items if (kind, i["item"]) not in verdicts]
        page = [{**i, "verdict": verdicts.get((kind, i["item"]))} for i in items[offset : offset + limit]]
        return {"kind": kind, "total": len(items), "offset": offset, "items": page, "stale": stale(found)}

    @app.post("/api/audit/{kind}/review", tags=["audit"])
    def audit_review(kind: str, verdict: Verdict) -> dict[str, Any]:
        """Mark one item ok or wrong (null takes the verdict back); kept in the index."""
        kind = kind_of(kind)
        found = lists()
        outdated = stale(found)  # its items may be relabelled or gone: the state a verdict keeps would be wrong
        if outdated:
            raise AuditOutdatedError(f"{outdated}, then give verdicts")
        known = {i["item"]: i for i in found["lists"][kind]}
        if verdict.item not in known:
            raise NotFoundError(f"no item {verdict.item[:80]!r} in the {kind} list")
        state = reviews.state_of(kind, known[verdict.item])
        reviews.mark(index.store.engine, kind, verdict.item, verdict.verdict, state)
        return {"kind": kind, "item": verdict.item, "verdict": verdict.verdict}
