"""What the command modules share, declared once: the console and the one-line error
rule (``user_errors``, from ``failures``), the options several commands take (one spelling per concept:
README, "Command overview"), the groups of them one object stands for
(``shared_options``: where an index is, the search filters; SAM's settings are in
``sam_options``), and the
command group whose commands still take their old spellings for one release
(``Typer``, ``Formerly``)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from usesearch.devices import device_fault, faiss_device_fault

from .checks import checked_by
from .checks import known_preset as known_preset
from .failures import ALL_FAILED_EXIT as ALL_FAILED_EXIT
from .failures import DEBUG_ENV as DEBUG_ENV
from .failures import console as console
from .failures import drawn_grey as drawn_grey
from .failures import err_console as err_console
from .failures import exit_if_all_failed as exit_if_all_failed
from .failures import first_and_more as first_and_more
from .failures import gone_or_changed as gone_or_changed
from .failures import index_flags as index_flags
from .failures import interrupted as interrupted
from .failures import interrupted_exit as interrupted_exit
from .failures import reason_beside as reason_beside
from .failures import say_failures as say_failures
from .failures import say_pairs as say_pairs
from .failures import shown as shown
from .failures import stdout_closed as stdout_closed
from .failures import user_errors as user_errors
from .paths import DEMO_INDEX as DEMO_INDEX
from .paths import DEMO_SAMPLES as DEMO_SAMPLES
from .paths import FOLDER_MARKS as FOLDER_MARKS
from .paths import folder_for as folder_for
from .paths import folder_to_write as folder_to_write
from .paths import json_file as json_file
from .paths import picture_file as picture_file
from .paths import refuse_other_kind as refuse_other_kind
from .paths import refuse_overwriting as refuse_overwriting
from .paths import refuse_replacing_a_photo as refuse_replacing_a_photo
from .paths import refuse_report_in_an_index as refuse_report_in_an_index
from .paths import result_file as result_file
from .paths import writable_file as writable_file
from .spellings import Formerly as Formerly
from .spellings import Typer as Typer
from .spellings import deprecated as deprecated
from .spellings import signature_of

if TYPE_CHECKING:
    from usesearch.indexer.filters import SearchFilters

KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY


def number_from(low: float, high: float) -> Callable[[str], float]:
    """A float option's parser: a finite number from ``low`` to ``high``, else one line.
    Click's range lets ``nan`` through (every comparison with it is false), and a
    ``parser`` turns Typer's ``min``/``max`` off, so the range is checked here."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            span = f"up to {high:g}" if low == -math.inf else f"from {low:g} to {high:g}"
            raise typer.BadParameter(f"{text!r}: give a number {span}")
        return value

    return parse


def shared_options(into: str, make: Callable[..., Any]):
    """Give a command options declared once for several commands: the parameters of
    ``make`` (a function or dataclass whose parameters are Typer options). Typer reads
    the signature made here, and the command receives them as one object,
    ``make(**values)``, in its parameter ``into``."""
    options = signature_of(make).parameters

    def decorate(command):
        signature = signature_of(command)
        own = [p for p in signature.parameters.values() if p.name != into]
        shared = [p.replace(kind=KEYWORD_ONLY) for p in options.values()]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name, p.default) for name, p in options.items()}
            return command(*args, **{into: make(**values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + shared)  # read by Typer
        wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
        return wrapper

    return decorate


# -- the model and where it runs ----------------------------------------------------------
PresetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--preset",
        "-p",
        help="Model preset: b16, l14-336, or tiny (random weights, for trials). "
        "Default: the --head's preset where a command takes --head; adding to an index, the index's; else b16.",
        callback=known_preset,
    ),
]
EmbedderOpt = Annotated[
    Optional[str],
    typer.Option(
        "--embedder", help="use | crop (default: use where a head exists, tiny's seeded one included; else crop)."
    ),
]
HeadOpt = Annotated[Optional[Path], typer.Option("--head", help="Head checkpoint (.safetensors + .json).")]
HeadsOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--head", help="Head checkpoint (.safetensors + .json); several --head: their class probabilities averaged."
    ),
]


DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        help="Where every model runs: cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu).",
        callback=checked_by(device_fault),
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="What SAM and the image towers compute in: auto (bfloat16 on a GPU that has it, else float32), "
        "float32, or bfloat16 (also on a CPU with AMX or AVX512-BF16: about 2x, masks within the GPU's tolerance).",
    ),
]
FaissDeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--faiss-device",
        help="Where FAISS runs: cpu, cuda or cuda:N (default: cuda only where the installed faiss has GPU support).",
        callback=checked_by(faiss_device_fault),
    ),
]
MaskerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--masker",
        help="sam | sam2 | felzenszwalb | coco (default: sam; felzenszwalb for the random-weight tiny preset).",
    ),
]
# ``segment`` and ``eval``: the same option; a COCO file's masks are for ``index --coco`` only.
PhotoMaskerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--masker", help="sam | sam2 | felzenszwalb (default: sam; felzenszwalb for the random-weight tiny preset)."
    ),
]


# -- the index ---------------------------------------------------------------------------
def not_empty(param: typer.CallbackParam, value: str | None) -> str | None:
    """An option naming something (a folder, a factory string) given as "" (an unset
    shell variable): refused, where it meant the current folder or the default (one a
    command requires cannot be left out: not offered)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("is empty: name it" + ("" if param.required else ", or leave the option out"))
    return value


# A string, not a Path: Path("") would silently turn an empty --db into the current folder.
DbOpt = Annotated[
    str, typer.Option("--db", help="Index folder (SQLite metadata, FAISS vectors, lock).", callback=not_empty)
]
DbUrlOpt = Annotated[
    Optional[str], typer.Option("--db-url", help="SQLAlchemy URL for the metadata instead of SQLite in --db.")
]


FactoryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--factory",
        help="FAISS index_factory string; given to reindex, fixed from then on (default, or `auto` to reindex: "
        "chosen by the index's size, again as it grows).",
        callback=not_empty,
    ),
]
MIN_SHARD_SIZE = 1_000  # on the command line (the API's tests lay out tiny shards)


def shard_size_given(value: int | None) -> int | None:
    """A shard holds millions of segments: 1-999 is a typo (5 for 5M) that a new index
    would grow into a file per 5 segments."""
    if value is not None and (value < 0 or value >= 2**63):  # (past 2**63 an id's shard is no int64)
        raise typer.BadParameter(f"{value}: give 0 (one shard) or a number of segments a shard")
    if value is not None and 0 < value < MIN_SHARD_SIZE:
        raise typer.BadParameter(f"{value} segments a shard: give 0 (one shard) or at least {MIN_SHARD_SIZE:,}")
    return value


ShardSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--shard-size",
        callback=shard_size_given,  # (its range there: a min and max here showed 2**63 - 1 in the help)
        help="Segments per FAISS shard (0: one shard; a new index: 10,000,000); shards share one trained quantizer, "
        "so they answer as one index and a write rewrites only the shards that changed.",
    ),
]
# A bare --ray is filled in as --ray local by the entry point (``app.main``).
RecallTargetOpt = Annotated[
    Optional[float],
    typer.Option(
        "--recall-target",
        parser=number_from(0.0, 1.0),
        metavar="<float>",
        help="Recall@10 a compressed index is calibrated for (default: as last asked, else 0.95); shown by `info`.",
    ),
]
LatencyBudgetOpt = Annotated[
    Optional[float],
    typer.Option(
        "--latency-budget",
        # 60000: calibration.MAX_BUDGET_MS (not imported: the CLI's help loads no FAISS)
        parser=number_from(0.0, 60_000.0),
        metavar="<float>",
        help="Median ms a query of a compressed index may take: calibration meets the recall target within it, "
        "else gets the best recall it affords (default: as last asked, else 50; 0: none).",
    ),
]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        help="Run on Ray (index: the models; reindex: filling the shards): a bare --ray starts Ray on this machine; "
        "--ray ADDRESS joins that cluster.",
    ),
]


@dataclass(frozen=True)
class IndexAt:
    """An index to search and where searching it runs: what query, similar and serve share."""

    db: DbOpt
    db_url: DbUrlOpt = None
    device: DeviceOpt = None
    faiss_device: FaissDeviceOpt = None

    def open(self):
        from usesearch.indexer import SegmentIndex

        return SegmentIndex.open(self.db, db_url=self.db_url, device=self.device, faiss_device=self.faiss_device)


with_index_at = shared_options("at", IndexAt)

# -- inputs and outputs ------------------------------------------------------------------
_coco = typer.Option(
    "--coco",
    exists=True,
    dir_okay=False,
    help="COCO annotations JSON: a labelled dataset indexed by its own masks (index), your own masks as "
    "proposals (index --masker coco), parts (eval parts), labels (eval audit).",
)
_coco_json = Formerly("--coco-json", note="`--coco-json FILE` is now `--coco FILE`")
_masks = Formerly("--masks", note="`--masks FILE` is now `--coco FILE`")
CocoOpt = Annotated[Path, _coco, _coco_json, _masks]
MaybeCocoOpt = Annotated[Optional[Path], _coco, _coco_json, _masks]
SplitOpt = Annotated[
    Optional[str],
    typer.Option(
        "--split",
        help="A labelled dataset's split: the one its annotations go into (index --coco; default: the COCO "
        "file's stem), or the only one searched (query, similar).",
    ),
]
_images = typer.Option("--images", exists=True, file_okay=False, help="Image folder.")
ImagesOpt = Annotated[Path, _images]
MaybeImagesOpt = Annotated[Optional[Path], _images]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Class names, comma-separated.")]
ClassesFileOpt = Annotated[
    Optional[Path],
    typer.Option("--classes-file", help="Class names, one per line (in label order).", exists=True, dir_okay=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KOpt = Annotated[int, typer.Option("-k", min=1, max=1000, help="How many results (hits, segments, suspects).")]
TopKOpt = Annotated[KOpt, Formerly("--top", note="`--top N` is now `-k N`")]


def out_file(what: str) -> Any:
    """``--out``: always a file written (a folder written has a flag of its own, named
    for what it holds); ``what`` says which file."""
    return typer.Option("--out", dir_okay=False, help=what, callback=writable_file)


OutJsonOpt = Annotated[
    Optional[Path],
    typer.Option("--out", dir_okay=False, help="Also write the result to this JSON file.", callback=result_file),
]


# -- search: which hits (``SearchFilters``), how many and where they go --------------------
def search_filters(
    per_image: Annotated[bool, typer.Option("--per-image", help="Keep only the best segment of each image.")] = False,
    path: Annotated[
        Optional[str],
        typer.Option(
            "--path",
            help="Only images whose path matches this glob ('2024/*': under any folder 2024).",
            callback=not_empty,  # (an unset shell variable searched every photo, as if no --path were given)
        ),
    ] = None,
    min_area: Annotated[int, typer.Option("--min-area", min=0, help="Only segments of at least this many pixels.")] = 0,
    min_score: Annotated[
        Optional[float],
        typer.Option("--min-score", help="Only hits scoring at least this (cosine); k may then return fewer."),
    ] = None,
    distinct: Annotated[
        bool, typer.Option("--distinct", help="Drop a hit mostly lying in, or holding, a better hit of the same photo.")
    ] = False,
    nprobe: Annotated[
        Optional[int],
        typer.Option("--nprobe", min=1, help="Compressed index: clusters visited per query (default: as calibrated)."),
    ] = None,
    rerank: Annotated[
        Optional[int],
        typer.Option(
            "--rerank",
            min=1,
            help="Compressed index: candidates re-scored exactly (default: as calibrated, else max(1000, 100 k)).",
        ),
    ] = None,
    label: Annotated[
        Optional[str], typer.Option("--label", help="Only annotation segments of this class (index --coco).")
    ] = None,
    split: SplitOpt = None,
    source: Annotated[
        Optional[str],
        typer.Option(
            "--source", help="Only annotation segments (a labelled dataset's) or only proposal ones (a masker's)."
        ),
    ] = None,
) -> SearchFilters:
    """The search filters from their flags, for query and similar."""
    given = dict(locals())  # the parameters, each named as its field
    from usesearch.errors import BadArgumentError
    from usesearch.indexer.filters import SearchFilters

    try:
        return SearchFilters(**given)
    except BadArgumentError as exc:  # named as the user gave it: by its flag
        raise exc.by_flag() from None


with_search_filters = shared_options("filters", search_filters)


@dataclass(frozen=True)
class SearchOutput:
    """How many hits a search returns and where they go."""

    k: KOpt = 10
    as_json: JsonOpt = False
    show: Annotated[
        Optional[Path],
        typer.Option(
            "--show", help="Write a contact sheet of the hits (.png, .jpg, .webp or .tiff).", callback=picture_file
        ),
    ] = None
    export_coco: Annotated[
        Optional[Path],
        typer.Option("--export-coco", help="Write the hits as a COCO annotations/results JSON.", callback=json_file),
    ] = None


with_search_output = shared_options("output", SearchOutput)
