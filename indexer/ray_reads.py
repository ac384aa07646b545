"""The stages of a Ray run that read photos: hashing (CPU tasks) and decoding (fused
with the actors). Apart from ``distributed`` so that a Ray worker that only reads and
hashes imports no model library: ``distributed`` loads torch, open_clip and faiss
(~3 s and ~800 MB a worker process on 2 cores, in each of a node's CPU workers)."""

from __future__ import annotations

import os

import numpy as np

from usesearch.errors import UsesearchError
from usesearch.io.files import decode, read_bytes, refuse_own_picture

from . import fragments
from .fragments import error_text
from .known_images import file_stat


def hash_files(batch: dict, max_bytes: int) -> dict:
    """Read and hash each file (no decoding): what the catalog is checked against; and
    its stat taken before the read ("": none), for the next run to skip it unread."""
    shas, errors, stats = [], [], []
    for fs_path, path in zip(batch["fs_path"], batch["path"]):
        name = os.fsdecode(bytes(fs_path))
        stats.append(file_stat(name) or "")
        try:
            shas.append(read_bytes(name, max_bytes, path)[1])
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - recorded by the committer
            shas.append("")
            errors.append(error_text(exc))
    out = {"sha256": np.array(shas, object), "error": np.array(errors, object), "file_stat": np.array(stats, object)}
    return {**batch, **out}


def decode_files(batch: dict, max_bytes: int, max_pixels: int, db_dir: str | os.PathLike) -> dict:
    """Each photo read and decoded, or why not. A photo whose decoding kills its process
    (a native crash, out of memory: in the actor it is fused with) counts the death as
    one its models would: Ray retried its task for ever."""
    images, errors = [], []
    for fs_path, path, sha in zip(batch["fs_path"], batch["path"], batch["sha256"]):
        images.append(np.zeros((0, 0, 3), np.uint8))
        errors.append(fragments.verdict(fragments.deaths(db_dir, sha)) or "")
        if errors[-1]:
            continue
        try:
            with fragments.attempted(db_dir, sha):
                data, now = read_bytes(os.fsdecode(bytes(fs_path)), max_bytes, path)
                if now != sha:
                    raise UsesearchError(f"{path} changed while it was being indexed; run again to index it anew")
                refuse_own_picture(data, path)
                images[-1] = decode(data, path, max_pixels)
        except Exception as exc:  # noqa: BLE001 - recorded by the committer
            errors[-1] = error_text(exc)
    return {**batch, "rgb": np.array(images + [None], object)[:-1], "error": np.array(errors, object)}
