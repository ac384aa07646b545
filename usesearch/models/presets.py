"""Named model presets, in the spirit of segment-anything's ``sam_model_registry``.

``l14-336`` is the paper's configuration (§4.2); ``b16`` trades accuracy for CPU
speed; ``tiny`` builds the same classes with small dims and seeded random
weights so tests and the offline demo need no download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from usesearch.errors import UnknownPresetError, UsesearchError
from usesearch.models.config import ClipConfig, DinoConfig, HeadConfig, PresetConfig, SamConfig

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

# An open_clip model config registered under this name for the tiny preset.
# Patch 16 for CLIP and 14 for DINOv2 on purpose: it exercises the same grid
# alignment that ``b16`` needs (different input sizes, same 8x8 grid).
TINY_CLIP_NAME = "usesearch-tiny-clip"
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_CLIP_CONFIG = json.loads((MODEL_CONFIG_DIR / f"{TINY_CLIP_NAME}.json").read_text())

DEFAULT_PRESET = "b16"  # real weights; `tiny` (random) only when asked for, or by `demo`

PRESETS: dict[str, PresetConfig] = {
    "l14-336": PresetConfig(
        name="l14-336",
        description="Paper setting: CLIP ViT-L/14-336 + DINOv2 ViT-L/14 at 560 px, SAM ViT-H",
        # 560 px is the paper's training crop (§4.2): a 40x40 grid for both /14 backbones.
        clip=ClipConfig("ViT-L-14-336", "openai", image_size=560, patch_size=14),
        dino=DinoConfig("vit_large_patch14_dinov2.lvd142m", True, image_size=560, patch_size=14),
        sam=SamConfig(
            "vit_h",
            "sam_vit_h_4b8939.pth",
            url=_SAM_URL + "sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_bytes=2564550879,
        ),
        head=HeadConfig(lln_dim=1024),
    ),
    "b16": PresetConfig(
        name="b16",
        description="CPU-friendlier: CLIP ViT-B/16 at 384 px + DINOv2 ViT-B/14 at 336 px (24x24 grid), SAM ViT-B",
        clip=ClipConfig("ViT-B-16", "openai", image_size=384, patch_size=16),
        dino=DinoConfig("vit_base_patch14_dinov2.lvd142m", True, image_size=336, patch_size=14),
        sam=SamConfig(
            "vit_b",
            "sam_vit_b_01ec64.pth",
            url=_SAM_URL + "sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375042383,
        ),
        head=HeadConfig(lln_dim=768),
    ),
    "tiny": PresetConfig(
        name="tiny",
        description="Small configs of the same classes with seeded random weights (tests, offline demo)",
        clip=ClipConfig(TINY_CLIP_NAME, None, image_size=128, patch_size=16, custom_config=TINY_CLIP_CONFIG, seed=1),
        dino=DinoConfig(
            "vit_small_patch14_dinov2",
            False,
            image_size=112,
            patch_size=14,
            # 7 blocks so that "the last 6" is a proper subset a test can check.
            overrides={"embed_dim": 32, "depth": 7, "num_heads": 2},
            seed=2,
        ),
        sam=SamConfig("tiny", None, seed=3),
        head=HeadConfig(lln_dim=32, seeded_random=True, seed=4),
    ),
}

for _preset in PRESETS.values():
    _preset.validate()


def check_preset_name(name: str) -> None:
    """A preset's name, or a head checkpoint's path (which names its preset), else refused
    in one line (``UnknownPresetError``), without torch: as the command line is read, as
    ``IndexOptions`` are made, and as ``load_model`` takes its first argument."""
    from usesearch.models.head_files import is_checkpoint

    if name in PRESETS or is_checkpoint(name):
        return
    if os.sep in name or Path(name).suffix in (".safetensors", ".json", ".pt"):  # (meant as a head's path)
        raise UnknownPresetError(f"{name}: no head checkpoint there (nor is it a preset: {', '.join(PRESETS)})")
    get_preset(name)


def get_preset(name: str) -> PresetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def refuse_unknown(preset: str | None, embedder: str | None) -> None:
    """A preset name (neither a preset nor a head checkpoint) or an embedder no model has,
    refused as unknown: an index's check said a typo was another model than its own."""
    if preset is not None:
        check_preset_name(preset)
    if embedder not in (None, "use", "crop"):
        raise UsesearchError(f"unknown embedder {embedder!r}; choose 'use' or 'crop'")


def resolve_embedder(preset_name: str, embedder: str | None, head) -> str:
    """``None`` picks 'use' where a head exists (given, or tiny's seeded one), else 'crop'."""
    if embedder:
        return embedder
    return "use" if head or get_preset(preset_name).head.seeded_random else "crop"
