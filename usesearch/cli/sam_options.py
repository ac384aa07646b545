"""SAM's settings as command-line flags, declared once: every command that runs SAM's
automatic masks takes all of them (``with_sam_settings``); ``curate run``, whose SAM
is prompted with boxes, the thresholds and the clean-up (``with_box_prompt_settings``).
Each command receives them as one ``SamSettings``."""

from __future__ import annotations

import inspect
import math
import typing
from typing import Annotated, Any

import typer

from usesearch.masks.settings import SAM_SETTINGS, SamSettings

from .options import KEYWORD_ONLY, number_from, shared_options
from .spellings import Formerly

# Each flag is its setting's name with dashes (``SamSettings.flag``): (help, lower bound,
# upper bound, old spelling). The thresholds are compared as segment-anything compares
# them: above 1 no mask passes, and a NaN would be recorded with the index and never
# equal itself again, so no later run could resume it (below 0 every mask passes: how
# random weights keep theirs). Box overlaps are shares. A grid past 512 points a side
# (262,144 prompts a crop) or crops past 5 layers (1,024 a photo, a 1 MP photo's under
# 40 px) is a typo, which failed every photo (out of memory, empty crops).
SAM_FLAGS: dict[str, tuple[str, float | None, float | None, str | None]] = {
    "points_per_side": ("grid prompts per side (default 32)", 1, 512, None),
    "points_per_batch": ("prompts per decoder batch (default 64 on a CPU; on a GPU as many as fit)", 1, None, None),
    "pred_iou_thresh": ("keep masks whose predicted IoU exceeds this (default 0.88; curate: 0.6)", -math.inf, 1, None),
    "stability_score_thresh": (
        "keep masks this stable or more (default 0.95; curate: 0.6)",
        -math.inf,
        1,
        "--stability-thresh",
    ),
    "box_nms_thresh": ("box IoU above which duplicates go (default 0.7)", 0, 1, None),
    "crop_n_layers": ("layers of image crops prompted again (default 0)", 0, 5, "--crop-layers"),
    "min_mask_region_area": (
        "remove holes and islands under this area (default 0; curate: 100)",
        0,
        None,
        "--min-region-area",
    ),
    "encoder_batch": ("photos per image-encoder call (default 4 on a GPU, 1 on a CPU)", 1, None, None),
}


def sam_settings(**values: Any) -> SamSettings:
    """SAM's settings from their flags."""
    return SamSettings(**values)


def _sam_flag(name: str, kind: Any) -> inspect.Parameter:
    help, low, high, old = SAM_FLAGS[name]
    if kind is float or typing.get_args(kind)[:1] == (float,):  # Click's range lets nan through
        assert low is not None and high is not None
        option = typer.Option(SamSettings.flag(name), parser=number_from(low, high), help=f"SAM: {help}.")
    else:
        option = typer.Option(SamSettings.flag(name), min=low, max=high, help=f"SAM: {help}.")
    annotation = Annotated[kind, option, Formerly(old)] if old else Annotated[kind, option]
    return inspect.Parameter(name, KEYWORD_ONLY, default=None, annotation=annotation)


def box_prompt_settings(**values: Any) -> SamSettings:
    """SAM's settings that box prompts take (``curate run``): no grid, no crops."""
    return SamSettings(**values)


# curate run prompts SAM with boxes: of its settings, the thresholds and the clean-up.
BOX_PROMPT_SETTINGS = ("pred_iou_thresh", "stability_score_thresh", "min_mask_region_area")
_kinds = typing.get_type_hints(SamSettings)
sam_settings.__signature__ = inspect.Signature([_sam_flag(n, _kinds[n]) for n in SAM_SETTINGS])  # type: ignore[attr-defined]
box_prompt_settings.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_sam_flag(n, _kinds[n]) for n in BOX_PROMPT_SETTINGS]
)
with_sam_settings = shared_options("sam", sam_settings)
with_box_prompt_settings = shared_options("sam", box_prompt_settings)
