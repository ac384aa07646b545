"""The web app's transport under a real server and real clients: slow or unfinished
headers and bodies, clients gone mid-upload, HEAD, capped bodies, and database errors
said as busy, unreachable or failed."""

from contextlib import contextmanager

import pytest

from usesearch.indexer.web import create_app

TOKEN = "s3cret-token-for-tests-0123456789"


@contextmanager
def live_server(index, header_timeout: float):
    """The app under uvicorn with ``server_config``'s limits, on a free loopback port."""
    import asyncio
    import socket
    import threading
    import time

    import uvicorn

    from usesearch.indexer.web import server_config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(index), "127.0.0.1", port, header_timeout=header_timeout))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_client_that_never_finishes_its_headers_is_disconnected(served):
    import socket
    import time

    _, index, _ = served
    with live_server(index, header_timeout=1.0) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        slow.settimeout(10)
        start = time.monotonic()
        assert slow.recv(100) == b"" and time.monotonic() - start < 5  # closed by the server
        slow.close()
        fine = socket.create_connection(("127.0.0.1", port))
        fine.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        fine.settimeout(30)
        assert fine.recv(20).startswith(b"HTTP/1.1 200")
        fine.close()


def test_a_slow_search_does_not_hold_up_the_others(served, monkeypatch):
    import threading

    _, index, client = served
    real = index.store.image_ids_matching
    entered, release = threading.Event(), threading.Event()

    def slow(*args, **kwargs):  # a filtered search that takes long (a huge archive)
        entered.set()
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(index.store, "image_ids_matching", slow)
    slow_search = threading.Thread(target=lambda: client.get("/api/search", params={"q": "fur", "path": "*/sub/*"}))
    slow_search.start()
    assert entered.wait(20)
    quick = {}
    other = threading.Thread(target=lambda: quick.update(r=client.get("/api/search", params={"q": "a cat", "k": 3})))
    other.start()
    other.join(15)
    finished_first = not other.is_alive()
    release.set()
    slow_search.join(30)
    other.join(30)
    assert finished_first, "a quick search waited for a slow one"
    assert quick["r"].status_code == 200


def test_one_client_holding_unfinished_headers_cannot_shut_out_the_others(served):
    """Slowloris from one address (127.0.0.2) opening more sockets than the global cap:
    past its per-client share they are closed at once, and a client at another address
    (127.0.0.1) is still answered."""
    import socket
    import time

    from usesearch.indexer.web import MAX_CONNECTIONS, MAX_PER_CLIENT

    _, index, _ = served
    attackers = []
    with live_server(index, header_timeout=30.0) as port:
        for _ in range(MAX_CONNECTIONS + 6):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            attackers.append(s)
        time.sleep(0.5)
        closed = 0
        for s in attackers:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:  # closed by the server with our headers unread
                closed += 1
            except (TimeoutError, socket.timeout):
                pass
        assert closed == len(attackers) - MAX_PER_CLIENT
        fine = socket.create_connection(("127.0.0.1", port))
        fine.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        fine.settimeout(30)
        assert fine.recv(20).startswith(b"HTTP/1.1 200")
        fine.close()
        for s in attackers:
            s.close()


def test_a_malformed_json_body_is_said_as_the_request_it_was(served):
    """Not "body.1: JSON decode error" with an input of {}, nor a b'...' echo."""
    _, _, client = served
    broken = client.post("/api/audit/swapped/review", content=b"{bad", headers={"Content-Type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("body: not valid JSON at character 1: Expecting property name")
    assert broken.json()["errors"][0]["input"] is None
    untyped = client.post("/api/audit/swapped/review", content=b'{"item": "x", "verdict": "ok"}')
    assert untyped.status_code == 422 and "Content-Type: application/json" in untyped.json()["detail"]
    assert untyped.json()["errors"][0]["input"] == '{"item": "x", "verdict": "ok"}'
    lone = client.post(  # a lone surrogate failed the error response's own UTF-8 encoding: a 400 of Python's words
        "/api/audit/swapped/review",
        content=b'{"item": "\\ud800", "verdict": "ok", "\\udc00": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert lone.status_code == 422 and "body.item" in lone.json()["detail"], lone.text


def test_head_is_answered_wherever_get_is_and_bodies_are_capped_per_route(served):
    """HEAD (monitors, ``curl -I``) gets GET's status and headers without a body; a JSON
    route takes at most ``MAX_BODY_BYTES`` (a declared larger body is a 413 unread)."""
    from usesearch.indexer.web.transport import MAX_BODY_BYTES

    _, _, client = served
    for path in ("/api/info", "/", "/api/segments/1/tile.png"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    assert client.head("/api/segments/999999/tile.png").status_code == 404
    huge = b'{"item": "x", "verdict": "ok", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    refused = client.post("/api/audit/swapped/review", content=huge, headers={"Content-Type": "application/json"})
    assert refused.status_code == 413 and "limit" in refused.json()["detail"]
    # Sent in pieces with no declared size: cut at the limit, and still a 413 (FastAPI's own
    # reading made it a 400; a photo's, through the middlewares' task groups, a 500).
    for path, size in (("/api/audit/swapped/review", MAX_BODY_BYTES), ("/api/region-search?point=1,1", 21 * 2**20)):
        pieces = (b"x" * 2**16 for _ in range(size // 2**16 + 2))
        streamed = client.post(path, content=pieces, headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and "over the limit" in streamed.json()["detail"], (path, streamed.text)


def test_a_client_gone_mid_upload_ends_its_request_quietly(served):
    """A cancelled upload: the app returns without raising (uvicorn logged ~170 lines
    of traceback for each), and the server goes on answering."""
    import asyncio

    _, _, client = served
    app = client.app
    messages = iter(
        [{"type": "http.request", "body": b"\x89PNG" * 100, "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = asgi_post("/api/region-search", b"point=1,1", [(b"content-length", b"5000000")])
    asyncio.run(app(scope, receive, send))  # raises nothing
    assert not any(m.get("status") == 500 for m in sent)
    assert client.get("/api/info").status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_a_408(served, monkeypatch):
    """A client trickling its body (a byte every few seconds) is answered 408 at the
    body's deadline instead of holding a worker for hours; a request without a body
    has no deadline (a slow search is never cut)."""
    import asyncio

    import usesearch.indexer.web.transport as transport

    monkeypatch.setattr(transport, "BODY_SECONDS", 0.5)
    monkeypatch.setattr(transport, "BODY_RATE", 10**12)
    _, _, client = served
    sent: list = []

    async def trickle():
        if not sent:
            sent.append("first")
            return {"type": "http.request", "body": b'{"item": ', "more_body": True}
        await asyncio.sleep(30)  # the rest never comes in time
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = asgi_post(
        "/api/audit/swapped/review", b"", [(b"content-type", b"application/json"), (b"content-length", b"100")]
    )
    asyncio.run(asyncio.wait_for(client.app(scope, trickle, send), 10))
    [start] = [m for m in sent if isinstance(m, dict) and m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if isinstance(m, dict) and m["type"] == "http.response.body")
    assert start["status"] == 408 and b"did not arrive within" in body, (start, body)
    assert client.get("/api/info").status_code == 200  # no body: no deadline, whatever it is


def asgi_post(path: str, query: bytes, headers: list) -> dict:
    """The ASGI scope of a POST to the app, for tests that drive its messages by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


def _real_database_errors(tmp_path) -> dict:
    """OperationalErrors as SQLAlchemy raises them from real databases: a SQLite file
    another connection holds locked, a table that does not exist, and a PostgreSQL
    server that refuses the connection (a closed port on this machine)."""
    import sqlite3

    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    def raised(engine, sql: str) -> OperationalError:
        with pytest.raises(OperationalError) as caught, engine.connect() as conn:
            conn.execute(text(sql))
        engine.dispose()
        return caught.value

    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    try:
        busy = raised(create_engine(f"sqlite:///{path}", connect_args={"timeout": 0}), "select * from t")
    finally:
        holder.close()
    failed = raised(create_engine(f"sqlite:///{path}"), "select * from no_such_table")
    refused = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=5"
    unreachable = raised(create_engine(refused), "select 1")
    return {"busy": busy, "failed": failed, "unreachable": unreachable}


def test_a_database_error_is_said_as_busy_unreachable_or_failed(served, tmp_path, monkeypatch):
    """A missing table was "busy; try again" (503): a client retried what no retry
    mends. Busy and unreachable are 503s with a Retry-After; anything else a 500 whose
    reason goes to the log, not to the client."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from usesearch.indexer.catalog import failure_kind

    _, index, client = served
    errors = _real_database_errors(tmp_path)
    assert {kind: failure_kind(exc) for kind, exc in errors.items()} == {k: k for k in errors}
    for error, kind in [
        (psycopg.errors.LockNotAvailable(), "busy"),
        (psycopg.errors.DeadlockDetected(), "busy"),
        (psycopg.errors.TooManyConnections(), "busy"),
        (psycopg.errors.AdminShutdown(), "unreachable"),
        (psycopg.errors.CannotConnectNow(), "unreachable"),
        (psycopg.errors.DiskFull(), "failed"),
        (psycopg.errors.DataCorrupted(), "failed"),
        # A connection's failure carries no SQLSTATE: a server's FATAL answer is the URL's
        # fault, unless it says it is starting, stopping or full (pgbouncer's words too).
        (psycopg.OperationalError('connection failed: FATAL:  database "x" does not exist'), "failed"),
        (psycopg.OperationalError("connection failed: FATAL:  the database system is starting up"), "unreachable"),
        (psycopg.OperationalError("connection failed: FATAL:  no more connections allowed"), "busy"),
        (psycopg.OperationalError("connection failed: FATAL:  pgbouncer cannot connect to server"), "unreachable"),
        (psycopg.OperationalError("connection refused"), "unreachable"),
    ]:
        assert failure_kind(OperationalError("select 1", {}, error)) == kind, error
    answers = {"busy": (503, "5", "busy; try again"), "unreachable": (503, "30", "cannot be reached")}
    answers["failed"] = (500, None, "the index database failed (the server's log says why)")
    for kind, exc in errors.items():

        def rows(ids, exc=exc):
            raise exc

        monkeypatch.setattr(index.store, "rows", rows)
        response = client.get("/api/segments/1")
        status, retry, detail = answers[kind]
        assert response.status_code == status and response.headers.get("retry-after") == retry, (kind, response.text)
        assert detail in response.json()["detail"] and "no_such_table" not in response.text


def test_a_search_whose_catalog_fails_says_so_in_python_and_on_the_web(served, tmp_path, monkeypatch):
    """An opened index whose database server went away raised SQLAlchemy's three-line
    ``OperationalError`` from its searches: a service had to import SQLAlchemy to catch
    it. Now ``CatalogUnavailableError`` or ``CatalogBusyError`` in one line (a 503 on the
    web, as before); a failure no retry mends stays what it was (a 500 on the web)."""
    import numpy as np
    from sqlalchemy.exc import OperationalError

    from usesearch.errors import CatalogBusyError, CatalogUnavailableError

    _, index, client = served
    raised = {"busy": CatalogBusyError, "unreachable": CatalogUnavailableError, "failed": OperationalError}
    vector = np.ones(index.info.dim, np.float32)
    for kind, exc in _real_database_errors(tmp_path).items():

        def generation(exc=exc):  # the first read of every search
            raise exc

        monkeypatch.setattr(index.store, "generation", generation)
        for search in (lambda: index.search_vector(vector), lambda: index.similar(1)):
            with pytest.raises(raised[kind]) as caught:
                search()
            if kind != "failed":
                assert "\n" not in str(caught.value) and str(caught.value).startswith("the catalog database at ")
        response = client.get("/api/search", params={"q": "cat"})
        assert response.status_code == (500 if kind == "failed" else 503), (kind, response.text)
        assert ("retry-after" in response.headers) == (kind != "failed")

    def locked():  # as SQLite's own cursor raises it (the rows' reads): not SQLAlchemy's
        import sqlite3

        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(index.store, "generation", locked)
    with pytest.raises(CatalogBusyError, match="is busy"):
        index.search_vector(vector)
    monkeypatch.undo()
