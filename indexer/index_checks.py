"""What a run checks before it writes into an index: the model and masker it was built
with (a wrong model for an index is refused, as is another masker), and a ``--factory``
that a new index can be built as or an existing one has."""

from __future__ import annotations

from pathlib import Path

from usesearch.errors import IndexMismatchError, UsesearchError
from usesearch.masks.coco_masker import masks_file_changed, masks_file_unrecorded
from usesearch.masks.settings import mask_defining

from . import index_kinds
from .folder import HEAD_COPY, index_flags
from .records import NO_MASKER, IndexInfo, info_summary
from .store import Store


def _same_head_path(existing: IndexInfo, info: IndexInfo) -> bool:
    """Both name one head file, on the same preset and embedder: the head there changed."""
    if not (existing.model_head and info.model_head):
        return False
    from usesearch.models.head_files import checkpoint_paths

    same_model = (existing.preset, existing.embedder) == (info.preset, info.embedder)
    # (`runs/b16`, `runs/b16/head` and `runs/b16/head.json` name one head: compared by its weights file)
    return same_model and (
        checkpoint_paths(existing.model_head)[0].resolve() == checkpoint_paths(info.model_head)[0].resolve()
    )


def check_identity(store: Store, info: IndexInfo) -> IndexInfo:
    """First run records the model; later runs must match it."""
    existing = store.info()
    if existing is None:
        store.set_info(info)
        return info
    if existing.fingerprint != info.fingerprint and _same_head_path(existing, info):
        raise IndexMismatchError(  # (it named the one path twice: "built with … head H; refusing … head H")
            f"the head at {info.model_head} is no longer the one this index was built with (model "
            f"{existing.fingerprint}, now {info.fingerprint}): put that head back, or leave out --head (the index "
            f"loads its own copy, {HEAD_COPY}/ in its folder, where it has one)"
        )
    if existing.fingerprint != info.fingerprint:
        raise IndexMismatchError(
            f"this index was built with {info_summary(existing)}; refusing to add segments from "
            f"{info_summary(info)}. Use the same --preset/--embedder/--head, or a new --db."
        )
    if info.masker == NO_MASKER:  # a labelled dataset's annotations: any masker's index takes them
        return existing
    # Annotations only so far: the first masker run names the masker; or an older index of
    # --masker coco asked for its file: the file's content is recorded.
    if existing.masker == NO_MASKER or masks_file_unrecorded(existing.masker_params, info.masker_params):
        store.set_masker(info.masker, info.masker_params)
        existing.masker, existing.masker_params = info.masker, info.masker_params
    # An index made before points_per_batch left the identity has it recorded: compared without it.
    if (existing.masker, mask_defining(existing.masker_params)) != (info.masker, mask_defining(info.masker_params)):
        raise IndexMismatchError(
            f"this index was built with masker {masker_said(existing.masker, existing.masker_params)}; this run asks "
            f"for {masker_said(info.masker, info.masker_params)}"
            f"{masks_file_changed(existing.masker_params, info.masker_params)}. "
            "Use the same masker or a new --db."
        )
    return existing


def refuse_other_masker(built: IndexInfo, masker: str, given: dict) -> None:
    """Another masker, or a setting given whose number differs from the one the index was
    built with, refused before any model loads: an ``index --coco FILE --masker X`` run
    had saved the file's annotations, then been refused at its masker run. (Settings
    compared otherwise are checked with the masker built, by ``check_identity``.)"""
    if built.masker == NO_MASKER:
        return
    recorded = masker_options(built.masker_params)
    differs = [
        key for key, value in mask_defining(given).items() if key in recorded and _numbers_differ(value, recorded[key])
    ]
    if masker != built.masker or differs:
        asked = masker_said(masker, {key: given[key] for key in differs})
        raise IndexMismatchError(
            f"this index was built with masker {masker_said(built.masker, built.masker_params)}; this run asks "
            f"for {asked}. Use the same masker or a new --db."
        )


def masker_options(params: dict) -> dict:
    """A masker's recorded settings under the names it takes them by (SAM 2's ``model``
    is its ``sam2_model`` option)."""
    return {("sam2_model" if key == "model" else key): value for key, value in params.items()}


def _numbers_differ(a, b) -> bool:
    try:
        return float(a) != float(b)
    except (TypeError, ValueError):
        return False  # (not numbers: compared once the masker is built)


def masker_said(name: str, params: dict) -> str:
    """``felzenszwalb (scales=[100.0, 400.0], max_masks=64)``, not a Python dict's repr."""
    return f"{name} ({', '.join(f'{key}={value}' for key, value in params.items())})" if params else name


def check_factory(
    existing: IndexInfo | None, factory: str, wanted: IndexInfo | None, db_dir: Path, db_url: str | None = None
) -> None:
    """``--factory`` names a new index's type, one it can build from nothing (an IVF would
    be trained on the first photo's few vectors, or fail and leave a folder no run opens);
    on an existing index, the type it has (``reindex --factory`` changes it)."""
    if existing is not None:
        if not index_kinds.same_kind(existing.dim, existing.factory, factory):
            raise UsesearchError(
                f"--factory {factory}: this index is {existing.factory} ({existing.index_mode}); "
                f"`usesearch reindex {index_flags(db_dir, db_url)} --factory {factory}` changes its type"
            )
        return
    if wanted is not None and not index_kinds.new_index(wanted.dim, factory).is_trained:
        raise UsesearchError(
            f"--factory {factory} must be trained on the vectors it will hold, and a new index has none: "
            f"index without --factory (the index grows into IVF by itself), or then run "
            f"`usesearch reindex {index_flags(db_dir, db_url)} --factory {factory}`"
        )
