"""What a run checks before it writes into an index: the model and masker it was built
with (a wrong model for an index is refused, as is another masker: ``as_built``, which
imports no model library, so the command line says so at once), and a ``--factory``
that a new index can be built as or an existing one has."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from usesearch.errors import (
    CatalogRefusedError,
    CatalogUnavailableError,
    IndexIdentityError,
    IndexMismatchError,
    IndexUpgradeNeededError,
    UsesearchError,
)
from usesearch.masks.coco_masker import masks_file_changed, masks_file_unrecorded
from usesearch.masks.settings import mask_defining
from usesearch.models.presets import PRESETS, refuse_unknown, resolve_embedder

from . import index_kinds
from .folder import (
    HEAD_COPY,
    check_catalog_kind,
    head_to_load,
    index_flags,
    is_new,
    open_store,
    refuse_a_foreign_catalog,
    refuse_if_written,
)
from .records import NO_MASKER, IndexInfo, info_summary
from .store import Store

if TYPE_CHECKING:
    from .options import IndexOptions


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


def as_built(db_dir: Path, options: IndexOptions) -> IndexOptions:
    """``options`` for adding to the index at ``db_dir``: where the run names no model
    (``--preset``, ``--embedder``, ``--head``) or masker, the ones the index was built
    with. Else ``index NEW --db OLD`` loaded the defaults' (b16's, SAM), sent a ``tiny``
    index's user to pull b16's weights, and refused the run only after loading them;
    another preset or embedder named is refused here, before any weights are looked for,
    as are another masker and a run while another indexer writes there."""
    check_catalog_kind(db_dir, options.db_url)  # (as below: before the defaults' weights are looked for)
    refuse_if_written(db_dir)
    refuse_a_foreign_catalog(options.db_url)
    if is_new(db_dir, options):
        return options
    try:
        store = open_store(db_dir, options.db_url, read_only=True)
    # Said now: the defaults' weights, looked for next,
    except (CatalogUnavailableError, CatalogRefusedError, IndexIdentityError, IndexUpgradeNeededError):
        raise  # would be blamed (a catalog of another index: refused after loading b16, or sent to pull it)
    except UsesearchError:  # an empty catalog on a server, or a folder to be refused later in its own words
        return options
    try:
        built = store.info()
    finally:
        store.close()
    if built is None:
        return options
    if options.preset not in (None, built.preset) or options.embedder not in (None, built.embedder):
        refuse_unknown(options.preset, options.embedder)
        preset = options.preset or built.preset
        same = options.preset in (None, built.preset) or preset not in PRESETS  # (a head's path: its own)
        embedder = options.embedder or (built.embedder if same else resolve_embedder(preset, None, options.head))
        asked = f"preset {preset!r}, embedder {embedder!r}"
        raise IndexMismatchError(  # before its weights are loaded (or a user sent to download them)
            f"this index was built with {info_summary(built)}; refusing to add segments from {asked}. "
            "Use the same --preset/--embedder/--head, or a new --db."
        )
    if options.head is None:  # what the run names is the index's own model: its head too
        head = head_to_load(db_dir, built.model_head)  # its copy in the folder where it has one
        options = replace(options, preset=built.preset, embedder=built.embedder, head=head)
    if options.masker is not None:
        refuse_other_masker(built, options.masker, options.masker_options)
    elif built.masker != NO_MASKER:
        # Its settings too (they define its masks: other ones are refused), under the
        # names the masker takes them by; ``--masker coco``'s file where it was (its
        # content is checked against the one recorded). A setting given is checked
        # against the index's masker's (it was checked against the preset's default one).
        given = masker_options(built.masker_params)
        if built.masker == "coco":
            given = {"masks_json": given["masks_json"]}
        refuse_other_masker(built, built.masker, options.masker_options)
        options = replace(options, masker=built.masker, masker_options={**given, **options.masker_options})
    return options
