"""The one registry of class-agnostic maskers (``MASKERS``, built by ``build_masker``;
the maskers themselves are ``maskers.py``'s): each one's builder, what it takes and
when it is the default, and the one-line refusal of a masker or an option it does not
take (``masker_kind``). A light module: the command line checks a masker and its
options with it before any model library is imported; the builders import theirs when
called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usesearch.errors import UsesearchError
from usesearch.masks.settings import SAM_SETTINGS, Masker, MaskerKind, SamSettings
from usesearch.models.presets import DEFAULT_PRESET, PRESETS

if TYPE_CHECKING:
    import torch

    from usesearch.models.config import PresetConfig


def _sam(preset: PresetConfig, device: str | torch.device | None, options: dict[str, Any]) -> Masker:
    from usesearch.devices import resolve_device
    from usesearch.masks.maskers import SamMasker
    from usesearch.masks.sam import load_sam

    sam = load_sam(preset.sam, preset.name, options.pop("sam_checkpoint", None), resolve_device(device))
    # A GPU's encoder is busier with a few photos at once (ViT-H: ~1 GB of activations
    # each in bf16); a CPU gains nothing from batching.
    options.setdefault("encoder_batch", 4 if sam.device.type == "cuda" else 1)
    return SamMasker(sam, **options)


def _sam2(preset: PresetConfig, device: str | torch.device | None, options: dict[str, Any]) -> Masker:
    from usesearch.devices import resolve_device
    from usesearch.masks.maskers import Sam2Masker
    from usesearch.masks.sam2_models import load_sam2

    model_name = options.pop("sam2_model", None) or ("tiny" if preset.sam.checkpoint is None else "hiera_l")
    model = load_sam2(model_name, options.pop("sam2_checkpoint", None), resolve_device(device))
    return Sam2Masker(model, model_name, **options)


def _coco(preset: PresetConfig, device: str | torch.device | None, options: dict[str, Any]) -> Masker:
    from usesearch.masks.maskers import CocoMasker

    if "masks_json" not in options:
        raise UsesearchError("--masker coco needs --coco FILE.json (COCO annotations with RLE or polygons)")
    return CocoMasker(options["masks_json"])


def _felzenszwalb(preset: PresetConfig, device: str | torch.device | None, options: dict[str, Any]) -> Masker:
    from usesearch.masks.maskers import FelzenszwalbMasker

    return FelzenszwalbMasker(**options)


MASKERS: dict[str, MaskerKind] = {
    "sam": MaskerKind(
        _sam,
        "SAM's automatic mask generator, grid point prompts (paper §4.3)",
        settings=frozenset(SAM_SETTINGS),
        options=None,
        default_for="trained",
        takes_precision=True,
    ),
    "sam2": MaskerKind(
        _sam2,
        "SAM 2.1's automatic mask generator (Hiera-L; a seeded 256-px Hiera-T for the tiny preset)",
        settings=frozenset(SAM_SETTINGS) - {"encoder_batch"},
        options=None,
        requires="sam2",
    ),
    "felzenszwalb": MaskerKind(
        _felzenszwalb,
        "weight-free superpixels at two scales (scikit-image), for offline runs",
        options=("scales", "min_area_frac", "max_masks"),
        default_for="random",
    ),
    "coco": MaskerKind(
        _coco,
        "your own masks from a COCO annotations JSON (RLE or polygons)",
        options=("masks_json",),
        flags="--coco FILE.json",
    ),
}


def build_masker(
    name: str | None,
    preset: PresetConfig,
    device: str | torch.device | None = None,
    precision: str = "auto",
    **options: Any,
) -> Masker:
    """The masker ``name`` of ``MASKERS`` with ``options`` (SAM's settings are
    ``SamSettings.given()``); ``device`` and ``precision`` as every model's
    (``usesearch.devices``: None is CUDA when torch sees it). ``None`` picks SAM, except
    for the random-weight tiny preset whose SAM gives noise: there the weight-free
    Felzenszwalb masker gives real-looking regions. Options the masker does not take
    are refused in one line (``masker_kind``)."""
    name, kind = masker_kind(name, preset, options)
    if kind.takes_precision and precision != "auto":  # (auto: the generator's own default)
        from usesearch.devices import resolve_device, uses_bf16

        options["autocast"] = uses_bf16(resolve_device(device), precision)
    return kind.build(preset, device, dict(options))


def check_masker_name(name: str) -> None:
    """A masker of the registry, else refused in one line (``IndexOptions`` checks its
    own as it is made)."""
    if name not in MASKERS:
        raise UsesearchError(f"unknown masker {name!r}; choose one of {', '.join(MASKERS)}")


def masker_kind(name: str | None, preset: PresetConfig, options: dict[str, Any]) -> tuple[str, MaskerKind]:
    """The masker ``name`` names (None: the preset's default, as ``build_masker`` says)
    and its kind, an unknown one or ``options`` it does not take refused in one line:
    callable before any model library loads (`--points-per-side` with the tiny preset's
    Felzenszwalb masker was refused after its embedder had loaded)."""
    if name is None:
        wanted = "random" if preset.sam.checkpoint is None and "sam_checkpoint" not in options else "trained"
        name = next(n for n, kind in MASKERS.items() if kind.default_for == wanted)
    check_masker_name(name)
    kind = MASKERS[name]
    refused = [
        o
        for o in options
        if o not in kind.settings and (o in SAM_SETTINGS or (kind.options is not None and o not in kind.options))
    ]
    if refused:
        raise UsesearchError(_refusal(name, kind, refused))
    return name, kind


def check_masker_for(name: str | None, preset_name: str | None, options: dict[str, Any]) -> None:
    """``masker_kind``'s check where the preset is known by its name (None: the default
    one), before any model library loads; none where the name is a head checkpoint's
    (its preset, and so its default masker, is known once the head is read)."""
    preset = PRESETS.get(preset_name or DEFAULT_PRESET)
    if preset is not None:
        masker_kind(name, preset, options)


def _refusal(name: str, kind: MaskerKind, refused: list[str]) -> str:
    settings = [o for o in refused if o in SAM_SETTINGS]
    if not settings:
        own = ", ".join(kind.options or ()) or "none"
        return f"the {name} masker has no option {', '.join(refused)}; its options: {own}"
    users = sorted(n for n, k in MASKERS.items() if set(settings) <= k.settings)
    own = ", ".join(SamSettings.flag(s) for s in SAM_SETTINGS if s in kind.settings) or kind.flags or "none"
    tiny = " (the default for the random-weight tiny preset)" if kind.default_for == "random" else ""
    return (
        f"{', '.join(map(SamSettings.flag, settings))} appl{'y' if len(settings) > 1 else 'ies'} to --masker "
        f"{' and '.join(users) or 'sam'} only; "
        f"this run uses masker {name} (its options: {own}){tiny}"
    )
