"""The index's own record, read and written by a ``Store``'s sessions: its identity
(``IndexInfo``: model, factory, generation), each vector shard's checksum and the
generation the FAISS file was built at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from usesearch.errors import UsesearchError

from .records import IndexInfo, VectorShard, VectorState


class IndexInfoRecords:
    """A ``Store``'s reads and writes of the index's own record."""

    sessions: sessionmaker[Session]
    _as_writer: Callable[[Callable[[], Any]], Any]
    _has_vector_state: bool

    def info(self) -> IndexInfo | None:
        def read() -> IndexInfo | None:
            with self.sessions() as s:
                return s.scalar(select(IndexInfo))

        return self._as_writer(read)  # (a writer's, as ``reindex``'s calibration reads it: through a restart)

    def set_info(self, info: IndexInfo) -> None:
        with self.sessions.begin() as s:
            s.add(info)

    def generation(self) -> int:
        def read() -> int:
            with self.sessions() as s:
                return s.scalar(select(IndexInfo.generation)) or 0

        return self._as_writer(read)

    def set_factory(self, factory: str, mode: str | None = None) -> None:
        with self.sessions.begin() as s:
            info = s.scalar(select(IndexInfo))
            if info is None:
                raise UsesearchError("this index has no identity yet, so no factory to change")
            info.factory = factory
            if mode is not None:
                info.index_mode = mode

    def vectors_checksum(self, shard: int = 0) -> str | None:
        with self.sessions() as s:
            if shard == 0:
                return s.scalar(select(IndexInfo.vectors_sha256))
            return s.scalar(select(VectorShard.sha256).where(VectorShard.shard == shard))

    def set_vectors_checksum(self, sha256: str, shard: int = 0) -> None:
        def write() -> None:
            with self.sessions.begin() as s:
                if shard == 0:
                    s.execute(update(IndexInfo).values(vectors_sha256=sha256))
                else:
                    s.merge(VectorShard(shard=shard, sha256=sha256))

        self._as_writer(write)

    def vectors_generation(self) -> int | None:
        if not self._has_vector_state:
            return None
        with self.sessions() as s:
            return s.scalar(select(VectorState.generation))

    def set_vectors_generation(self, generation: int | None) -> None:
        def write() -> None:
            with self.sessions.begin() as s:
                s.merge(VectorState(id=1, generation=generation))

        self._as_writer(write)

    def set_shard_size(self, shard_size: int) -> None:
        with self.sessions.begin() as s:
            s.execute(update(IndexInfo).values(shard_size=shard_size))
