"""SAM 3's weights, light to import (no torch): which checkpoint each model of
``sam3.SAM3_MODELS`` reads, whether it is on this machine (``models list``) and
``models pull sam3``. The model itself is in ``sam3`` and ``sam3_build``."""

from __future__ import annotations

import os
from pathlib import Path

from usesearch.errors import UsesearchError
from usesearch.models.weights import (
    WeightStatus,
    _hub_cached,
    damaged,
    file_fault,
    refuse_when_unreachable,
    usesearch_home,
)

HF_REPO, CHECKPOINT = "facebook/sam3", "sam3.pt"

# Per model of ``sam3.SAM3_MODELS``: its file under $USESEARCH_HOME; None: seeded random.
SAM3_CHECKPOINTS: dict[str, str | None] = {"sam3": CHECKPOINT, "tiny": None}


def sam3_status(name: str = "sam3", checkpoint: str | os.PathLike | None = None) -> WeightStatus:
    file = SAM3_CHECKPOINTS[name]
    if file is None and checkpoint is None:
        return WeightStatus("sam3", f"SAM 3 {name}", False, None, "", "seeded random")
    expected = Path(checkpoint) if checkpoint else usesearch_home() / str(file)
    found = expected if expected.exists() else None  # a folder there: a fault, not missing
    if found is None and checkpoint is None:
        found = _hub_cached(HF_REPO, (CHECKPOINT,))
    source = f"hf.co/{HF_REPO} ({CHECKPOINT}, gated)"
    return WeightStatus("sam3", "SAM 3", True, found, str(expected), source, file_fault(found))


def pull_sam3() -> list[str]:
    """``usesearch models pull sam3``: SAM 3's checkpoint from Hugging Face into $USESEARCH_HOME.

    The download goes through a staging folder that is moved into place whole, so a
    failed or interrupted pull leaves no lock file or metadata in $USESEARCH_HOME; a
    partial download is kept there only so that the next pull resumes it."""
    status = sam3_status()
    if status.fault is not None:  # a file of the user's, not ours to replace (as ``pull`` and ``pull_sam2`` say)
        raise UsesearchError(damaged(status, "sam3"))
    if status.present:
        return []
    import logging
    import shutil

    from huggingface_hub import hf_hub_download

    refuse_when_unreachable(f"SAM 3 (hf.co/{HF_REPO})")
    staging = usesearch_home() / ".sam3-download"
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would print a second, longer copy of the error
    try:
        fetched = Path(hf_hub_download(HF_REPO, CHECKPOINT, local_dir=staging))
        os.replace(fetched, usesearch_home() / CHECKPOINT)
    except BaseException as exc:  # a Ctrl-C leaves no lock file either
        from huggingface_hub.errors import GatedRepoError

        from usesearch.errors import first_line, is_disk_full

        _tidy_staging(staging)
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, GatedRepoError):
            why = "it is gated: accept its licence on the model page, then `hf auth login`"
        elif is_disk_full(exc):
            why = f"the disk under {usesearch_home()} is full (it takes about 3.5 GB)"
        else:
            why = first_line(exc)
        raise UsesearchError(f"could not download {CHECKPOINT} from hf.co/{HF_REPO}: {why}") from None
    finally:
        hub_log.setLevel(level)
    shutil.rmtree(staging, ignore_errors=True)
    return [f"sam3: downloaded {usesearch_home() / CHECKPOINT}"]


def _tidy_staging(staging: Path) -> None:
    """After a failed pull: drop Hugging Face's lock files, and the whole staging folder
    unless it holds a partial download (``*.incomplete``) worth resuming."""
    import shutil

    for lock in staging.rglob("*.lock"):
        lock.unlink(missing_ok=True)
    if not any(part.stat().st_size for part in staging.rglob("*.incomplete")):
        shutil.rmtree(staging, ignore_errors=True)
