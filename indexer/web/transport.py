"""What every request gets below the routes: a body size limit per route and a time
for the body to arrive, HEAD answered wherever GET is, and a client gone mid-upload
let go without a traceback.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``): it must see the
body as it streams in, and the response's messages as they go out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.requests import ClientDisconnect

MAX_BODY_BYTES = 64 * 2**10  # a JSON request (an audit verdict is ~100 bytes)
# A body must arrive within max(BODY_SECONDS, its limit at BODY_RATE): a client sending
# a byte every few seconds would hold a worker for hours (uvicorn times headers only).
BODY_SECONDS, BODY_RATE = 30.0, 64 * 2**10


class Transport:
    """``limit_for(path)``: the most body bytes a request to ``path`` may send. A body
    declared larger gets a 413 before anything is read; one streamed past it ends
    the app's reading there, and its answer is a 413 too."""

    def __init__(self, app, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await _json(send, 413, f"the request body is {int(declared)} bytes; the limit here is {limit}")
            return
        expects_body = declared not in (b"", b"0") or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        allowed_s = max(BODY_SECONDS, limit / BODY_RATE)
        deadline = asyncio.get_running_loop().time() + allowed_s
        received, body_done, answered = 0, not expects_body, False
        refused: tuple[int, str] | None = None  # (status, why) once the body broke a rule
        head = scope["method"] == "HEAD"
        if head:  # GET's answer, headers alone (Starlette's own routes do the same)
            scope = {**scope, "method": "GET"}

        async def limited() -> dict:
            # Past a rule the app is told the client left: an exception raised here
            # would reach the routes wrapped by the middlewares' task groups (a 500).
            nonlocal received, body_done, refused
            if body_done:  # no body, or after it: a receive waits for the client to leave, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                refused = 408, f"the request body did not arrive within {allowed_s:.0f} s"
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refused = 413, f"the request body is over the limit here of {limit} bytes"
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: dict) -> None:
            nonlocal answered
            if refused:  # whatever the app makes of the cut body (FastAPI: a 400), this is the answer
                if not answered:
                    answered = True
                    await _json(send, *refused)
                return
            answered = answered or message["type"] == "http.response.start"
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, limited, answer)
        except Exception as exc:
            gone = isinstance(exc, ClientDisconnect) or (
                isinstance(exc, BaseExceptionGroup) and exc.split(ClientDisconnect)[1] is None
            )
            if not (refused or gone):
                raise
        if refused and not answered:
            await _json(send, *refused)


async def _json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
