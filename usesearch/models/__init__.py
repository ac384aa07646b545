"""The USE model: presets and their configs, weights on disk, frozen backbones, the
encoder and head (paper §3.2), text prompts, checkpoints and ``load_model``."""
