"""Which texts CLIP reads as one, apart from the text encoder (a class list's check, before
any model loads, imports no torch)."""

from __future__ import annotations


def text_key(text: str) -> str:
    """Texts CLIP's tokenizer cannot tell apart (it lowercases and folds whitespace) are
    one text: training must not make them each other's negatives, nor a class list name
    one class twice."""
    return " ".join(text.lower().split())
