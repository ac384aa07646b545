"""Class-agnostic masks: the masker registry (``maskers``), SAM and SAM 2 loading, SAM's
automatic mask generator at its model's cost (``amg``, ``sam_fast``), single-prompt
regions, and the one RLE module (``rle``)."""
