"""What a request to the web app's JSON API may ask: filters and effort reach the
search and say why it found nothing or looked no harder, as the CLI does; a bad
request is a 4xx with a message, and no request it accepts ends in a 500."""

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usesearch.indexer.search import MAX_QUERY_CHARS
from usesearch.indexer.web import MAX_K


def test_a_query_string_that_is_not_utf8_is_a_400(served):
    """`q=%FF%FE` was decoded as two U+FFFD and searched for: 200, hits for nothing asked."""
    _, _, client = served
    for url in ("/api/search?q=%FF%FE", "/api/search?q=cat&path=caf%E9*", "/api/segments/1/similar?label=%FF"):
        answer = client.get(url)
        assert answer.status_code == 400 and "not UTF-8" in answer.json()["detail"], (url, answer.text)
    assert client.get("/api/search?q=caf%C3%A9").status_code == 200  # UTF-8: as ever


def test_a_search_a_filter_empties_says_why_as_the_cli_does(served):
    """`label=x`, `path=[`, `source=annotation` on an unlabelled index: 200, "hits": [],
    and nothing more, where the CLI names what the index lacks."""
    _, _, client = served
    cases = [
        ({"label": "unicorn"}, "label 'unicorn': the index has no such class (it holds no labelled dataset: "),
        ({"path": "*nowhere*"}, "no indexed photo's path matches path '*nowhere*'"),
        ({"source": "annotation"}, "source annotation: the index holds no annotation segments"),
        ({"min_score": 0.999}, "no hit scores at least min_score 0.999 (the best found without it scores"),
        (  # a class is an annotation's: with proposals alone, nothing is ever found
            {"label": "unicorn", "split": "val", "source": "proposal"},
            "label and split name annotations, and source proposal leaves them out: give one or the other",
        ),
    ]
    for params, said in cases:
        answer = client.get("/api/search", params={"q": "fur", **params}).json()
        assert answer["hits"] == [] and any(said in note for note in answer["notes"]), (params, answer)


def test_search_effort_reaches_the_search(served, monkeypatch):
    """`nprobe` and `rerank`, as the CLI takes them: the API took neither and ignored
    them (200, the index's own effort), so a script searching harder got nothing."""
    _, index, client = served
    seen, real = [], index.query
    monkeypatch.setattr(index, "query", lambda q, k, filters=None: (seen.append(filters), real(q, k, filters))[1])
    assert client.get("/api/search", params={"q": "fur", "nprobe": 8, "rerank": 100}).status_code == 200
    assert [(f.nprobe, f.rerank) for f in seen] == [(8, 100)]


def test_an_effort_that_changes_nothing_is_noted_as_the_cli_notes_it(served):
    """`nprobe=100` on an exact index: 200 and `notes: null`, where the CLI said
    "--nprobe and --rerank: this index is exact …: nothing to change"."""
    _, index, client = served
    assert index.index.exact
    answer = client.get("/api/search", params={"q": "fur", "nprobe": 100, "rerank": 50}).json()
    assert answer["hits"] and answer["notes"] == [
        "nprobe and rerank: this index is exact (every segment scored): nothing to change"
    ]
    assert client.get("/api/search", params={"q": "fur"}).json()["notes"] is None  # (nothing asked: nothing said)


BAD_REQUESTS = [
    ("/api/search", {"q": "x" * (MAX_QUERY_CHARS + 1)}, 422, "at most 1000"),
    ("/api/search", {"q": ""}, 422, "at least 1"),
    ("/api/search", {}, 422, "q"),
    ("/api/search", {"q": "   "}, 400, "empty"),
    ("/api/search", {"q": "a\x00cat"}, 400, "the query text holds a NUL character"),  # (a word to CLIP)
    ("/api/search", {"q": "cat", "k": 0}, 422, "greater than or equal to 1"),
    ("/api/search", {"q": "cat", "k": MAX_K + 1}, 422, "less than or equal to 200"),
    ("/api/search", {"q": "cat", "k": "many"}, 422, "integer"),
    ("/api/search", {"q": "cat", "min_area": -1}, 422, "min_area"),
    ("/api/search", {"q": "cat", "min_score": "nan"}, 422, "min_score: Input should be a finite number"),  # not "<= 1"
    ("/api/search", {"q": "cat", "min_score": 1.5}, 422, "min_score: Input should be less than or equal to 1"),
    ("/api/search", {"q": "cat", "path": "*" * 600}, 422, "path"),
    ("/api/search", {"q": "cat", "path": "a\x00b/*"}, 400, "the filter path holds a NUL"),  # PostgreSQL's 500
    ("/api/search", {"q": "cat", "label": "\x00x"}, 400, "the filter label holds a NUL"),
    ("/api/search", {"q": "cat", "nprobe": 0}, 422, "nprobe: Input should be greater than or equal to 1"),
    ("/api/search", {"q": "cat", "rerank": 10**6}, 422, "rerank: Input should be less than or equal to 32768"),
    ("/api/segments/0", {}, 422, "segment_id"),
    ("/api/segments/99999999", {}, 404, "no segment with id 99999999"),
    (f"/api/segments/{2**64}", {}, 422, "segment_id"),
    ("/api/segments/abc/mask.png", {}, 422, "segment_id"),
    ("/api/segments/99999999/similar", {}, 404, "no segment"),
    ("/api/segments/99999999/tile.png", {}, 404, "no segment"),
    ("/api/segments/1/tile.png", {"size": 100000}, 422, "size"),
    ("/api/images/99999999", {}, 404, "no indexed image"),
    ("/api/images/99999999/thumbnail.jpg", {}, 404, "no indexed image"),
    ("/api/images/1/thumbnail.jpg", {"size": 0}, 422, "size"),
    ("/api/nothing-here", {}, 404, "Not Found"),
    ("/api/audit", {}, 404, "this index has not been audited yet"),
    ("/api/audit/nope", {}, 404, "no audit list 'nope'"),  # was "not audited yet", which no audit mends
]


@pytest.mark.parametrize("url,params,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_message(served, url, params, status, message):
    response = served[2].get(url, params=params)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    q=st.text(max_size=1200),
    k=st.integers(-5, 10**20),
    path=st.none() | st.text(max_size=40),
    min_area=st.integers(-(10**15), 10**15),
    segment=st.integers(-(10**20), 10**20) | st.text(max_size=12),
)
def test_no_request_the_api_accepts_ends_in_a_500(served, q, k, path, min_area, segment):
    client = served[2]
    segment = quote(str(segment), safe="")
    params = {"q": q, "k": k, "min_area": min_area, **({"path": path} if path is not None else {})}
    for response in (
        client.get("/api/search", params=params),
        client.get(f"/api/segments/{segment}/similar", params={k: v for k, v in params.items() if k != "q"}),
        client.get(f"/api/segments/{segment}/tile.png", params={"size": k}),
        client.get(f"/api/images/{segment}/thumbnail.jpg", params={"size": k}),
    ):
        assert response.status_code < 500, (response.request.url, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"]
