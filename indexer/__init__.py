"""Indexer: pipeline stage (see README)."""
