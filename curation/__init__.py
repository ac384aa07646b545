"""Curation: pipeline stage (see README)."""
