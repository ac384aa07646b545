"""Curation (paper §3.1): images (or captioned / annotated datasets) -> segment-text
pairs: MLLM captions, referring expressions, Grounding DINO boxes, SAM box-prompted
masks, mask NMS, dataset shards.

Imports the core (``usesearch``) and nothing of ``indexer`` or ``training``."""
