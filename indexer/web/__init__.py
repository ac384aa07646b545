"""The serving stage: a search page and JSON API over an index folder (``usesearch serve``)."""

from __future__ import annotations

import os
from pathlib import Path

from .app import MAX_K, create_app
from .security import LOOPBACK_NAMES, TOKEN_ENV, check_bind, is_loopback

__all__ = ["MAX_K", "TOKEN_ENV", "create_app", "serve"]


def serve(
    db_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    db_url: str | None = None,
    device: str | None = None,
) -> None:
    """Open the index, load its model once, and answer until interrupted."""
    import uvicorn

    from ..search import SegmentIndex

    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)  # before the slow model load: a refusal should be instant
    index = SegmentIndex.open(Path(db_dir), db_url=db_url, device=device)
    try:
        allowed_hosts = [*LOOPBACK_NAMES, host] if is_loopback(host) else None
        uvicorn.run(create_app(index, token, allowed_hosts), host=host, port=port, log_level="info")
    finally:
        index.close()
