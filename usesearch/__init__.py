"""usesearch: open-vocabulary segment search with Universal Segment Embeddings."""

from .checkpoint import load_head, save_head
from .errors import CheckpointMismatchError, MissingWeightsError, NoTrainedHeadError, UsesearchError
from .factory import create_use, load_model
from .head import patch_weights
from .presets import PRESETS, get_preset
from .text import CLASSNAME_TEMPLATES, EXPRESSION_TEMPLATES

__version__ = "0.1.0"

__all__ = [
    "CLASSNAME_TEMPLATES",
    "EXPRESSION_TEMPLATES",
    "PRESETS",
    "CheckpointMismatchError",
    "MissingWeightsError",
    "NoTrainedHeadError",
    "UsesearchError",
    "create_use",
    "get_preset",
    "load_head",
    "load_model",
    "patch_weights",
    "save_head",
]
