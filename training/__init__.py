"""Training the USE head (paper §3.2, §4.2) on curated segment-text pairs: data and
augmentation, the contrastive loss of eq. (1), a nanoGPT-style loop with exact
resume, and a synthetic world for offline tests.

Imports the core (``usesearch``) and reads ``curation``'s dataset format; nothing
of ``indexer``."""
