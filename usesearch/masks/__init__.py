"""Class-agnostic masks: the masker registry (``maskers``) and what maskers give
(``proposals``), SAM and SAM 2 loading, SAM's automatic mask generator at its model's
cost (``amg``, ``sam_fast``), single-prompt regions, and the one RLE module (``rle``)."""
