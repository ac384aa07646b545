"""``index --repair``: photos with a damaged embedding row (``Store.damaged_images``)
sorted by where they are. Those under the folders being indexed lose their proposals
and their damaged annotations (one transaction each), so the walk makes their
proposals again (``index --coco`` the annotations); their sound annotations stay.
Damaged photos elsewhere, or whose file is gone, are left as they are and named."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Repair:
    repaired: list[str] = field(default_factory=list)  # proposals dropped, to be embedded again
    unrepaired: list[str] = field(default_factory=list)  # outside the folders indexed: left as they are
    damaged_gone: list[str] = field(default_factory=list)  # file gone: nothing would embed them again
    annotations_dropped: int = 0  # annotations with a damaged row: `index --coco` embeds them again


def drop_damaged(store, paths: Sequence[str | os.PathLike]) -> Repair:
    """Drop what the walk of ``paths`` will make again (see the module's docstring)."""
    repair = Repair()
    roots = [os.path.realpath(os.fspath(p)) for p in paths]
    for image_id in store.damaged_images():
        record = store.image(image_id)
        if record is None:
            continue
        real = os.path.realpath(os.fsdecode(record.fs_path))
        if not os.path.lexists(record.fs_path):  # (dropped, its segments were lost unsaid)
            repair.damaged_gone.append(record.path)
        elif any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            repair.annotations_dropped += len(store.drop_damaged(image_id))
            repair.repaired.append(record.path)
        else:
            repair.unrepaired.append(record.path)
    return repair
