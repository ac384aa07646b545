"""What an indexing run is asked to do (``IndexOptions``) and what it did
(``IndexReport``), alike for the sequential indexer, the Ray one and ``prune``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from usesearch.devices import check_precision, device_fault, faiss_device_fault
from usesearch.errors import BadArgumentError, UsesearchError
from usesearch.io.files import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from usesearch.reports import RunReport


@dataclass
class IndexOptions:
    preset: str | None = None  # None: the head's preset, else b16 (real weights)
    embedder: str | None = None  # None: 'use' where a head exists (or is given), else 'crop'
    head: str | None = None
    masker: str | None = None  # None: 'sam', or 'felzenszwalb' for the random-weight tiny preset
    masker_options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None  # the models' (usesearch.devices): None is CUDA when torch sees it, else the CPU
    precision: str = "auto"  # the image models' (usesearch.devices.PRECISIONS): auto is bfloat16 on a GPU that has it
    faiss_device: str | None = None  # FAISS's (faiss_gpu.resolve): None is the GPU only where this faiss supports one
    factory: str | None = None  # None: chosen by the collection's size (index_choice.py), and again as it grows
    retry_failed: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    db_url: str | None = None
    shard_size: int | None = None  # segments per FAISS shard (0: one shard); None: as the index has it
    faiss_every_s: float = 120.0  # also written at the end and on Ctrl-C
    compile: bool | None = None  # torch.compile SAM and the backbones; None: ``devices.compiles`` decides
    repair: bool = False  # first drop photos with damaged embedding rows, so this run embeds them again
    recall_target: float | None = None  # recall@10 a compressed index is calibrated for; None: as stored, else 0.95

    def __post_init__(self) -> None:
        """What can be checked without a model, checked as the options are made: a preset,
        embedder or masker no model has, a device misspelt, or a limit no photo passes,
        failed only in ``index_paths`` (the latter after making the folder, every photo
        refused)."""
        check_shard_size(self.shard_size)
        check_precision(self.precision)
        if self.preset is not None or self.embedder is not None:
            from usesearch.models.presets import refuse_unknown

            refuse_unknown(self.preset, self.embedder)
        if self.masker is not None:
            from usesearch.masks.registry import check_masker_name

            check_masker_name(self.masker)
        for name, fault_of in (("device", device_fault), ("faiss_device", faiss_device_fault)):
            value = getattr(self, name)
            if isinstance(value, str) and (fault := fault_of(value)):
                raise BadArgumentError(f"{name}: {fault}")
        for name in ("max_pixels", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadArgumentError(f"{name} is a number of at least 1; got {value!r}")


def check_shard_size(shard_size: int | None) -> None:
    """Segments per FAISS shard: 0 (one shard) or more. A negative one, recorded, left
    an index that no later open could lay out (the CLI's --shard-size had its own check)."""
    if shard_size is not None and (
        isinstance(shard_size, bool) or not isinstance(shard_size, int) or not 0 <= shard_size < 2**63
    ):  # (past 2**63 an id's shard is no int64: one shard is 0)
        raise UsesearchError(f"shard_size is 0 (one shard) or a number of segments per shard; got {shard_size!r}")


MAX_SHARDS = 1_000  # a shard holds millions (10,000,000 on a new index): past this, a typo (5 for 5M)


def check_shard_count(shard_size: int, last_id: int) -> None:
    """A ``shard_size`` that lays the index's ids out in more than ``MAX_SHARDS`` files
    refused in one line, before anything is rewritten: ``--shard-size 5`` turned an
    index of 1,053 segments into 215 files, and one of 10M into two million."""
    shards = -(-last_id // shard_size) if shard_size else 1
    if shards > MAX_SHARDS:
        raise UsesearchError(
            f"--shard-size {shard_size:,} would lay this index's {last_id:,} segment ids out in {shards:,} shard "
            f"files (at most {MAX_SHARDS:,}: a shard holds millions of segments); give a larger one, or 0 for one"
        )


class LoopReport(Protocol):
    """What ``Writer.run`` records in a run's report (``IndexReport``, ``PruneReport``)."""

    interrupted: bool
    loop_seconds: float
    skipped: int
    calibrated: Any  # the calibration the run measured, else None
    calibration_note: str | None  # a target asked of an index with nothing to calibrate: kept, said so


@dataclass
class IndexReport(RunReport):
    segments: int = 0
    model_seconds: float = 0.0  # inside the masker and the embedder
    masker_seconds: float = 0.0  # inside the masker
    masker_forward_seconds: float = 0.0  # of which SAM's forward passes (encoder, decoder), where the masker says
    loop_seconds: float = 0.0  # the per-image loop, without start-up (model loading)
    interrupted: bool = False
    devices: list[str] = field(default_factory=list)  # where the models and FAISS ran, a line each
    calibrated: Any = None  # a ``calibration.Calibration`` this run measured (grown past its last), else None
    calibration_note: str | None = None  # ``calibrating.kept_for_later``'s line
    repaired: list[str] = field(default_factory=list)  # photos with damaged embedding rows, embedded again
    unrepaired: list[str] = field(default_factory=list)  # damaged ones outside the folders indexed: left
    damaged_gone: list[str] = field(default_factory=list)  # damaged ones whose file is gone: left for prune
    annotations_dropped: int = 0  # annotations whose rows were damaged: `index --coco` embeds them again
    # By split: annotations of photos whose content changed, gone with the old content
    # (`index --coco` embeds them again on the new).
    annotations_lost: dict[str, int] = field(default_factory=dict)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path) of photos renamed or moved
    # Files skipped as copies: (path, the indexed photo of the same content). A copy of a photo
    # earlier in the same run is named once that photo is committed; one whose photo failed
    # fails with it, and one whose photo a Ctrl-C left uncommitted is left out.
    copies: list[tuple[str, str]] = field(default_factory=list)
    # Of those copies, ones indexed before with other content: (path, its old segments, removed).
    copies_replacing: list[tuple[str, int]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # files deleted or moved between the walk and their read
    failed_before: int = 0  # of those skipped: failed in an earlier run, same content, not retried (--retry-failed)
    stages: dict[str, float] = field(default_factory=dict)  # wall seconds by stage, for benchmarks

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def share_lists_of(self, writer) -> None:
        """The masker run's lists, the ``Writer``'s own (filled as the run goes): what its
        opening repaired or left, the annotations it dropped or lost, moves and copies."""
        repair = writer.repair
        self.repaired, self.unrepaired, self.damaged_gone = repair.repaired, repair.unrepaired, repair.damaged_gone
        self.annotations_dropped, self.annotations_lost = repair.annotations_dropped, writer.store.annotations_lost
        self.moved, self.copies, self.copies_replacing = writer.moved, writer.copies, writer.copies_replacing
