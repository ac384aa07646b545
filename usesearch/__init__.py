"""usesearch: open-vocabulary segment search with Universal Segment Embeddings.

The core: model presets and weights, backbones, the USE encoder and head, text
prompts, image reading (``images``, ``files``), masks (``rle``), maskers and their
registry (``registry``, ``maskers``, ``amg``, ``sam``), semantic segmentation and the CLI.
It imports nothing from ``indexer``, ``curation`` or ``training``, except in the
CLI wiring (``cli_*.py``), which joins the stages.

The public names load lazily (PEP 562) so that the CLI's ``--help`` and the light
modules do not pay for importing torch, open_clip and timm.
"""

from importlib import import_module

from usesearch.errors import CheckpointMismatchError, MissingWeightsError, NoTrainedHeadError, UsesearchError

__version__ = "0.1.0"

_LAZY = {
    "load_model": "usesearch.models.factory",
    "load_text_model": "usesearch.models.factory",
    "create_use": "usesearch.models.factory",
    "patch_weights": "usesearch.models.head",
    "load_head": "usesearch.models.checkpoint",
    "save_head": "usesearch.models.checkpoint",
    "PRESETS": "usesearch.models.presets",
    "get_preset": "usesearch.models.presets",
    "EXPRESSION_TEMPLATES": "usesearch.models.text",
    "CLASSNAME_TEMPLATES": "usesearch.models.text",
}

__all__ = ["CheckpointMismatchError", "MissingWeightsError", "NoTrainedHeadError", "UsesearchError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'usesearch' has no attribute {name!r}")
