"""The web app's guards: files only by id, a token on every request (and on the serve
command's own server), loopback host names, a token to bind beyond loopback, cross-site
requests refused, no third-party doc pages."""

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from usesearch.cli.app import app as cli_app
from usesearch.errors import UsesearchError
from usesearch.indexer.web import create_app
from usesearch.indexer.web.security import check_bind, is_loopback

TOKEN = "s3cret-token-for-tests-0123456789"


def test_files_are_served_only_by_id(served, tmp_path):
    root, _, client = served
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    photo = next((root / "photos").rglob("*.png"))
    attempts = [
        f"/api/images/{secret}/thumbnail.jpg",
        f"/api/images/..%2F..%2F..%2F{secret}/thumbnail.jpg",
        "/api/images/../../../../etc/passwd",
        "/api/segments/..%2F..%2Fetc%2Fpasswd/mask.png",
        "/../../../../etc/passwd",
        "/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        f"/{photo}",
        f"/api/images/{photo.name}",
        f"/app.js/..%2F..%2F{secret.name}",
        f"/api/search?q=cat&path={secret}",
        f"/api/images/1/thumbnail.jpg?path={secret}",
        f"/api/segments/1/tile.png?image={photo}",
    ]
    for url in attempts:
        response = client.get(url)
        assert b"TOP-SECRET" not in response.content and b"root:" not in response.content, url
        assert response.status_code < 500, url
        if "?" not in url:
            assert response.status_code in (404, 422), (url, response.status_code)
        # Query strings never name a file: an extra ?path= or ?image= only filters or is ignored.
        elif response.headers["content-type"].startswith("image/"):
            assert response.content != photo.read_bytes()


def test_a_token_guards_every_request(served):
    _, index, _ = served
    client = TestClient(create_app(index, token=TOKEN))
    for url in (
        "/",
        "/app.js",
        "/openapi.json",
        "/docs",
        "/api/search?q=cat",
        "/api/segments/1/tile.png",
        "/api/images/1/thumbnail.jpg",
    ):
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401, url
    assert "token" in client.get("/api/search?q=cat").json()["detail"]
    spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert spec["paths"]["/api/search"]["get"]["security"] == [{"token": []}]
    assert "401" in spec["paths"]["/api/search"]["get"]["responses"]
    assert client.get("/api/search?q=cat", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # A browser opens the page once with ?token=, then its <img> requests carry the cookie.
    page = client.get(f"/?token={TOKEN}&x=1")
    assert page.status_code == 200 and page.history and page.history[0].status_code == 303
    assert str(page.url).endswith("/?x=1")  # the token left the address bar; the cookie holds it
    assert client.get("/api/segments/1/tile.png").status_code == 200
    client.cookies.clear()
    assert client.get("/api/segments/1/tile.png").status_code == 401


def test_a_loopback_server_refuses_other_host_names(served):
    from usesearch.indexer.web.security import LOOPBACK_NAMES

    client = TestClient(create_app(served[1], allowed_hosts=LOOPBACK_NAMES), base_url="http://127.0.0.1:8000")
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/info", headers={"Host": "[::1]:8000"}).status_code == 200
    # A page on attacker.example whose name was re-pointed at 127.0.0.1 (DNS rebinding).
    assert client.get("/api/info", headers={"Host": "attacker.example:8000"}).status_code == 400


def test_binding_beyond_loopback_needs_a_token(served, monkeypatch):
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        assert not is_loopback(host)
        with pytest.raises(UsesearchError, match="--token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(UsesearchError, match="too short"):
        check_bind("0.0.0.0", "short")

    root = served[0]
    monkeypatch.delenv("USESEARCH_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--db", str(root / "db"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "USESEARCH_TOKEN" in result.output


def test_the_serve_command_answers_over_http_with_its_token(served):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "USESEARCH_TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "usesearch", "serve", "--db", str(served[0] / "db"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                response = httpx.get(
                    f"{base}/api/search", params={"q": "a cat"}, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "usesearch serve did not start listening"
                time.sleep(0.25)
        assert response.status_code == 200 and len(response.json()["hits"]) == 24
        assert httpx.get(f"{base}/api/search", params={"q": "a cat"}).status_code == 401
        assert httpx.get(f"{base}/api/info", params={"token": TOKEN}).status_code == 200
    finally:
        server.terminate()
        server.wait(30)
    log = server.stdout.read()
    assert "GET /api/info?token=REDACTED" in log and TOKEN not in log  # the access log never holds the token


def test_cross_site_requests_are_refused(served):
    _, _, client = served
    for headers in (
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},
    ):
        response = client.get("/api/search", params={"q": "a cat"}, headers=headers)
        assert response.status_code == 403 and "cross-site" in response.json()["detail"], headers
    assert (
        client.get("/api/search", params={"q": "a cat"}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    )
    assert client.get("/api/search", params={"q": "a cat"}, headers={"Origin": "http://testserver"}).status_code == 200
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}  # a shared link, followed
    assert client.get("/", headers=link).status_code == 200
    # Behind a reverse proxy the Host is the upstream's (127.0.0.1:8000), the Origin the public site's.
    proxied = {"Host": "127.0.0.1:8000", "Origin": "https://photos.example.com"}
    assert client.get("/api/info", headers={**proxied, "Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.get("/api/info", headers={**proxied, "X-Forwarded-Host": "photos.example.com"}).status_code == 200
    assert client.get("/api/info", headers={**proxied, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get("/api/info", headers=proxied).status_code == 403  # an old browser, no forwarded host


def test_no_third_party_doc_pages_and_short_422s(served):
    _, _, client = served
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    import re

    links = re.findall(r'href="(/[^"#]*)"', client.get("/").text)  # the footer linked /docs: a 404
    assert "/api" in links and all(client.get(link).status_code == 200 for link in links), links
    response = client.get("/api/search", params={"q": "x" * 60_000})  # near the URL length clients allow
    assert response.status_code == 422 and len(response.content) < 2000
