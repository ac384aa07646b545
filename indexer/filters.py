"""Which segments a search returns, and how hard it looks: one typed object taken by
every search (``SegmentIndex.query``, ``similar``, ``similar_region``, ``search_vector``),
built by the CLI from its flags and by the web app from its query parameters.

Its ranges are checked when it is made, alike for Python, the CLI and the web API: a
NaN score would silently switch its filter off, a huge area overflow SQL's integers."""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from usesearch.errors import BadArgumentError
from usesearch.io.files import display_path

from .records import ANNOTATION, PROPOSAL

SOURCES = (ANNOTATION, PROPOSAL)
MAX_MIN_AREA = 2**40  # past any photo's pixel count, and within every SQL integer type
CANDIDATES_MAX = 32_768  # a compressed index's search re-scores at most these (~50 MB of rows at 768-d)


# Each field's types (numpy's scalars too; a bool is no number here) and their name.
_FLAG, _WHOLE, _NUMBER, _TEXT = (
    ((bool, np.bool_), "true or false"),
    ((int, np.integer), "an integer"),
    ((int, float, np.integer, np.floating), "a number"),
    ((str,), "text"),
)
FIELD_KINDS = {"per_image": _FLAG, "distinct": _FLAG, "min_area": _WHOLE, "min_score": _NUMBER}
FIELD_KINDS |= {"nprobe": _WHOLE, "rerank": _WHOLE} | {name: _TEXT for name in ("path", "label", "split", "source")}


@dataclass(frozen=True)
class SearchFilters:
    """``per_image``: only the best segment of each image. ``path``: only images whose
    path matches this glob (a relative one from any folder on: ``2024/*`` is
    ``*/2024/*``). ``min_area``: only segments of at least this many pixels.
    ``min_score``: only hits scoring at least this cosine (k may then return fewer).
    ``label``, ``split``: only annotation segments of this class, of this split (a
    labelled dataset indexed with ``--coco``). ``source``: only ``"annotation"`` or only
    ``"proposal"`` segments (a masker's).
    ``distinct``: drop a hit that mostly lies inside, or mostly contains, a better hit
    of the same image. ``nprobe`` (clusters visited) and ``rerank`` (candidates
    re-scored exactly) trade speed for recall on a compressed index; None: the index's own."""

    per_image: bool = False
    path: str | None = None
    min_area: int = 0
    min_score: float | None = None
    distinct: bool = False
    nprobe: int | None = None
    rerank: int | None = None
    label: str | None = None
    split: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self._check_types()
        if not 0 <= self.min_area <= MAX_MIN_AREA:
            raise _refused("min_area", f"must be between 0 and {MAX_MIN_AREA} pixels, got {self.min_area}")
        if self.min_score is not None and not (math.isfinite(self.min_score) and -1.0 <= self.min_score <= 1.0):
            raise _refused("min_score", f"must be a number from -1 to 1 (a cosine), got {self.min_score}")
        if self.source not in (None, *SOURCES):
            raise _refused("source", f"must be one of {', '.join(SOURCES)}, got {self.source!r}")
        for name in ("label", "split"):
            if getattr(self, name) == "":
                raise _refused(name, f"must name a {'class' if name == 'label' else 'split'}, got ''")
        for name in ("nprobe", "rerank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise _refused(name, f"must be at least 1, got {value}")
        if self.rerank is not None and self.rerank > CANDIDATES_MAX:  # (taken, and silently cut to it)
            raise _refused(
                "rerank", f"must be at most {CANDIDATES_MAX} (a search re-scores no more), got {self.rerank}"
            )

    def _check_types(self) -> None:
        """Each field of its own type: a dict's ``"min_area": "5"`` failed deep in the
        search on a comparison, and ``"per_image": "false"`` (a non-empty string) was true.
        A NUL in a text field reached PostgreSQL as an error of its own (no path holds one).
        What is plainly meant is taken: None for a field that has another default (a
        JSON null), a whole float for an integer (``5.0``: JSON's numbers)."""
        for name, (kind, noun) in FIELD_KINDS.items():
            value = getattr(self, name)
            if value is None:
                value = _DEFAULTS[name]
                object.__setattr__(self, name, value)  # (frozen: set once, while it is made)
                if value is None:
                    continue
            if kind is _WHOLE[0] and isinstance(value, (float, np.floating)) and float(value).is_integer():
                value = int(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, kind) or (bool not in kind and isinstance(value, (bool, np.bool_))):
                raise _refused(name, f"is {noun}, got {value!r}"[:200])
            if isinstance(value, str) and "\x00" in value:
                raise _refused(name, "holds a NUL character (U+0000), which no name holds")
            if isinstance(value, str) and not value.isascii():
                object.__setattr__(self, name, _as_catalog_spells(name, value))


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchFilters)}


def _as_catalog_spells(name: str, value: str) -> str:
    """``value`` with the bytes a shell passed undecoded (a file name's, tab-completed:
    Python carries them as surrogates) spelt ``\\xNN``, as the catalog spells such
    paths (``display_path``); SQLite failed on them ("surrogates not allowed")."""
    try:
        return display_path(value)
    except UnicodeEncodeError:  # a lone surrogate no byte gives
        raise _refused(name, "holds a character no text holds (a lone surrogate)") from None


def _refused(name: str, says: str) -> BadArgumentError:
    """A filter's value refused, named by its field (Python's and the web API's
    spelling; the CLI says its flag: ``BadArgumentError.by_flag``)."""
    return BadArgumentError(f"the filter {name} {says}"[:300], argument=name)  # (1e300 as an int: 300 digits)


def check_filters(filters) -> SearchFilters:
    """``filters`` as a search takes them: None (no filter), a ``SearchFilters``, or a
    mapping of its fields (``{"min_area": 500}``: a dict failed deep in the search on
    an attribute it lacks)."""
    if filters is None:
        return SearchFilters()
    if isinstance(filters, SearchFilters):
        return filters
    if isinstance(filters, Mapping):
        fields = [f.name for f in dataclasses.fields(SearchFilters)]
        unknown = [str(name) for name in filters if name not in fields]
        if unknown:
            raise BadArgumentError(f"no filter named {', '.join(unknown)} (SearchFilters has: {', '.join(fields)})")
        return SearchFilters(**filters)
    raise BadArgumentError(f"filters is a SearchFilters (or a dict of its fields); got {type(filters).__name__}")


def check_query_text(text: str, max_chars: int) -> None:
    if not isinstance(text, str):
        raise BadArgumentError(f"a query is text; got {type(text).__name__} (search_vector takes a vector)")
    if not text or not text.strip():
        raise BadArgumentError("the query text is empty")
    if "\x00" in text:  # (pasted binary: CLIP's tokenizer took it as a word of its own)
        raise BadArgumentError("the query text holds a NUL character (U+0000)")
    if len(text) > max_chars:
        raise BadArgumentError(f"the query is {len(text)} characters; the limit is {max_chars}")


def check_segment_id(segment_id: int) -> None:
    if not isinstance(segment_id, (int, np.integer)) or isinstance(segment_id, bool):  # True was segment 1
        raise BadArgumentError(f"segment_id is an int (a search result's segment_id); got {segment_id!r}")


def check_k(k: int) -> int:
    """``k`` as a Python int (a NumPy integer reached FAISS's SWIG layer as a wall of C++
    prototypes), at least 1."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)
    except TypeError:  # (operator.index's own, or the bool's above)
        raise BadArgumentError(f"k must be an integer, got {type(k).__name__}") from None
    if k < 1:
        raise BadArgumentError("k must be at least 1")
    return k


def check_query_vector(vector, dim: int) -> np.ndarray:
    """A query vector as float32 [dim], refused in words where it cannot be one: another
    dimension (FAISS raised a bare AssertionError) or not finite (NaN: no hit, silently)."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):  # (a text: NumPy's "could not convert string to float")
        raise BadArgumentError(f"the query vector is numbers; got {type(vector).__name__} {vector!r:.40}") from None
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (dim,):
        raise BadArgumentError(f"the query vector has shape {array.shape}; this index's vectors have {dim} dimensions")
    if not np.isfinite(array).all():
        raise BadArgumentError("the query vector is not finite (NaN or infinity)")
    wide = array.astype(np.float64)  # (float32's norm overflowed past 1e19, underflowed below 1e-19)
    norm = float(np.linalg.norm(wide))
    if norm == 0.0:
        raise BadArgumentError("the query vector is all zeros: it has no direction to search in")
    # Scores are cosines only for a unit vector (``min_score`` is one): another length scaled them all.
    return (wide / norm).astype(np.float32) if abs(norm - 1.0) > 1e-6 else array


def did_you_mean(wanted: str, have: list[str]) -> str:
    """The names ``wanted`` differs from only in case, else the closest (``Person`` for
    ``person``; ``traffic ligth``): the list above is cut at 20 of a dataset's 80 classes."""
    near = [name for name in have if name.casefold() == wanted.casefold()]
    near = near or difflib.get_close_matches(wanted, have, n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(repr(name) for name in near)}?" if near else ""


def narrowed_by(filters: SearchFilters, spelt: Callable[[str], str] = str) -> str:
    """The filters that keep some segments out of a search, as the caller spells them
    ("--path 'misc/*' --label 'cat'"); '' where every segment is searched."""
    given = {name: getattr(filters, name) for name in ("path", "label", "split", "source", "min_area", "min_score")}
    kept_out = {name: value for name, value in given.items() if value is not None and (name, value) != ("min_area", 0)}
    return " ".join(f"{spelt(name)} {value!r}" for name, value in kept_out.items())


def why_none(store, filters: SearchFilters, best=None, spelt: Callable[[str], str] = str) -> list[str]:
    """Why a search found nothing, where a filter names what the index does not have, or
    ``min_score`` cut every hit (``best(filters)``: the search's best hit under other
    filters; an empty table said nothing of how far off the score was). ``spelt``: a
    filter's name as the caller spells it (the CLI's flags; the web API's fields)."""
    if not any(store.has_source(source) for source in SOURCES):  # (a filter's note would mislead: nothing to match)
        return ["the index holds no segment yet (`usesearch index` adds them)"]
    why: list[str] = []
    if filters.path and not store.image_ids_matching(filters.path):
        folder = store.common_folder()
        line = f"no indexed photo's path matches {spelt('path')} {filters.path!r}" + (
            f" (under {folder})" if folder else ""
        )
        # A folder named bare ("misc", "misc/", "./misc/*"): a glob matches whole paths.
        bare = filters.path.removeprefix("./").rstrip("/").removesuffix("/*")
        if not any(c in bare for c in "*?[") and bare and store.image_ids_matching(f"{bare}/*"):
            line += f"; photos under a folder {bare!r}: {spelt('path')} '{bare}/*'"
        why.append(line)
    for flag, noun, wanted, names in (
        (spelt("label"), "class", filters.label, store.categories),
        (spelt("split"), "split", filters.split, store.splits),
    ):
        if wanted is not None:
            have = names()
            if wanted not in have:
                listed = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "")
                why.append(
                    f"{flag} {wanted!r}: the index has no such {noun} "
                    + (
                        f"(it has: {listed})"
                        if have
                        else "(it holds no labelled dataset: `index IMAGES --coco FILE.json`)"
                    )
                    + did_you_mean(wanted, have)
                )
    # A class or split is an annotation's: a proposal has none.
    if filters.source == "proposal" and (filters.label is not None or filters.split is not None):
        given = [spelt(name) for name in ("label", "split") if getattr(filters, name) is not None]
        verb = "name" if len(given) > 1 else "names"
        why.append(
            f"{' and '.join(given)} {verb} annotations, and {spelt('source')} proposal leaves them out: "
            "give one or the other"
        )
    if filters.source is not None and not store.has_source(filters.source):
        made_by = (
            "`index IMAGES --coco FILE.json` adds them" if filters.source == "annotation" else "a masker run makes them"
        )
        why.append(f"{spelt('source')} {filters.source}: the index holds no {filters.source} segments ({made_by})")
    if filters.min_area and not why and filters.min_area > (largest := store.largest_area()):
        why.append(f"no segment covers {spelt('min_area')} {filters.min_area} pixels (the largest covers {largest})")
    if filters.min_score is not None and not why and best is not None:
        top = best(dataclasses.replace(filters, min_score=None))
        if top and top[0].score < filters.min_score:  # (searched wider without the cut, it may find one above)
            why.append(
                f"no hit scores at least {spelt('min_score')} {filters.min_score:g} "
                f"(the best found without it scores {top[0].score:.3f})"
            )
    return why


def effort_notes(
    index, filters: SearchFilters, spelt: Callable[[str], str] = str, info_hint: str = "", kind: str = "text"
) -> list[str]:
    """Where how hard a search looked is not what its user would take it to be: an effort
    filter the index has no use for (it was silently ignored), a calibration that fell
    short of its recall target (only ``info`` said so; ranks 3-5 differed from a full
    search) for this ``kind`` of query (``"image"``: by a segment or a region, whose
    recall is measured apart, not what the target is set for), or a compressed index
    never calibrated (a rebuild cut short: 0.81 searched unsaid). ``spelt`` as for
    ``why_none``; ``info_hint``: where the caller reads why."""
    from usesearch.reports import recall_shown

    from .index_kinds import ivf_of

    asked = [spelt(name) for name in ("nprobe", "rerank") if getattr(filters, name) is not None]
    if asked and index.index.exact:
        return [f"{' and '.join(asked)}: this index is exact (every segment scored): nothing to change"]
    ivf = ivf_of(index.index.index)
    if filters.nprobe is not None and ivf is None:
        return [f"{spelt('nprobe')}: this index has no clusters to visit (a graph): nothing to change"]
    if ivf is not None and filters.nprobe is not None and filters.nprobe > ivf.nlist:  # (FAISS: all, silently)
        return [f"{spelt('nprobe')} {filters.nprobe}: this index has {ivf.nlist} clusters: all {ivf.nlist} visited"]
    measured = index.calibration
    if asked or ivf is None:
        return []
    if measured is None:
        return [
            "this compressed index's recall has not been measured for it (a rebuild cut short, an index grown "
            "into it since, or one made before calibration): `usesearch calibrate` measures it and sets how hard "
            "its searches look; "
            f"{spelt('nprobe')} and {spelt('rerank')} look harder meanwhile"
        ]
    recall = measured.recall_kinds.get("image", measured.recall) if kind == "image" else measured.recall
    if recall >= measured.target:  # (met, or only slower than budgeted)
        return []
    if kind == "image" and measured.recall >= measured.target:
        return [
            f"this index finds ~{recall:.2f} of an image query's true top {measured.k} (its target "
            f"{measured.target} is for typed queries, which it meets; {spelt('nprobe')} and {spelt('rerank')} "
            "look harder)"
        ]
    return [
        f"this index searches at recall@{measured.k} ~{recall_shown(recall, measured.target)}, under its "
        f"target {measured.target} "
        f"({info_hint}{spelt('nprobe')} and {spelt('rerank')} look harder)"
    ]
