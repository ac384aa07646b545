"""usesearch: open-vocabulary segment search with Universal Segment Embeddings.

The core: model presets and weights, backbones, the USE encoder and head, text
prompts, image reading (``images``, ``files``), masks (``rle``), maskers and their
registry (``maskers``, ``amg``, ``sam``), semantic segmentation and the CLI.
It imports nothing from ``indexer``, ``curation`` or ``training``, except in the
CLI wiring (``cli_*.py``), which joins the stages.

The public names load lazily (PEP 562) so that the CLI's ``--help`` and the light
modules do not pay for importing torch, open_clip and timm.
"""

from importlib import import_module

from .errors import CheckpointMismatchError, MissingWeightsError, NoTrainedHeadError, UsesearchError

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".factory",
    "create_use": ".factory",
    "patch_weights": ".head",
    "load_head": ".checkpoint",
    "save_head": ".checkpoint",
    "PRESETS": ".presets",
    "get_preset": ".presets",
    "EXPRESSION_TEMPLATES": ".text",
    "CLASSNAME_TEMPLATES": ".text",
}

__all__ = ["CheckpointMismatchError", "MissingWeightsError", "NoTrainedHeadError", "UsesearchError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'usesearch' has no attribute {name!r}")
