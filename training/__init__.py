"""Training: pipeline stage (see README)."""
