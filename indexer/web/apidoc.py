"""The app's OpenAPI schema as its server answers (``described``: the error bodies and
statuses it sends, the token it asks for), and a reference page rendered from it, with
no assets: FastAPI's ``/docs`` fetches Swagger UI from a CDN, which an offline archive
machine cannot reach; this page needs nothing but the server.
"""

from __future__ import annotations

from html import escape
from typing import Any

ERROR = {  # every error's body (error_handlers.py)
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"type": "string", "title": "Detail", "description": "What went wrong, in one line."}},
    "required": ["detail"],
}
# FastAPI's own says {"detail": [ValidationError]}; error_handlers.invalid sends one line and the list beside it.
VALIDATION = {
    "title": "HTTPValidationError",
    "type": "object",
    "properties": {
        "detail": {"type": "string", "title": "Detail", "description": "Each problem, `where: what`, joined by '; '."},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}, "maxItems": 10},
    },
    "required": ["detail", "errors"],
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}}
PICTURES = ("tile.png", "overlay.png", "thumbnail.jpg")  # drawn from the photo, which may be gone since


def described(spec: dict[str, Any], token: bool) -> dict[str, Any]:
    """``spec`` (FastAPI's schema of the app) with the errors the server sends: a client
    generated from it read every error body as a list, and knew no status but 200 and
    422 (nor the token every route asks for, where one is set)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    if "HTTPValidationError" in schemas:
        schemas["HTTPValidationError"] = VALIDATION
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            responses = op.setdefault("responses", {})
            answers = {"400": "A value the route cannot use, said in `detail`."}
            if "{" in path or path.startswith("/api/audit"):
                answers["404"] = "No such id or list (or no audit yet), said in `detail`."
            if path.endswith(PICTURES):
                answers["410"] = "The photo is gone from disk or changed since it was indexed."
            if "requestBody" in op:
                answers["413"] = "The body is past the route's limit."
            if method == "post":
                answers["403"] = "A cross-site request, or a verdict an index read-only here cannot keep."
            if method == "post" and path.startswith("/api/audit"):
                answers["409"] = "The audit's lists predate the index's last change: audit again first."
            if path == "/api/search":
                answers["501"] = "refine=sam3 on a server without the sam3 package or SAM 3's weights."
            if token:
                answers["401"] = "No token, or the wrong one."
            for status, description in answers.items():
                responses.setdefault(status, {"description": description, "content": error})
            responses["503"] = {
                "description": "Busy, or the index database cannot be reached: try again after Retry-After.",
                "headers": RETRY_AFTER,
                "content": error,
            }
            if token:
                op["security"] = [{"token": []}]
    if token:
        schemes = spec["components"].setdefault("securitySchemes", {})
        schemes["token"] = {"type": "http", "scheme": "bearer", "description": "Or ?token= once: kept as a cookie."}
    return spec


CONSTRAINTS = {"minimum": "≥", "maximum": "≤", "minLength": "min length", "maxLength": "max length"}


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    return schema.get("type", schema.get("$ref", "").rsplit("/", 1)[-1] or "any")


def _constraints(schema: dict[str, Any]) -> str:
    for option in schema.get("anyOf", []):
        schema = {**option, **schema}
    parts = [f"{label} {schema[key]}" for key, label in CONSTRAINTS.items() if key in schema]
    if "default" in schema:
        parts.append(f"default {schema['default']!r}")
    return ", ".join(parts)


def render(spec: dict[str, Any]) -> str:
    info = spec.get("info", {})
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>usesearch API</title>",
        "<style>body{font:14px/1.5 system-ui,sans-serif;max-width:960px;margin:24px auto;padding:0 16px;color:#222}"
        "code{background:#f2f2f2;padding:1px 4px}table{border-collapse:collapse;width:100%}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}"
        "h2{margin-top:32px;font-size:16px}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))} API</h1>",
        f"<p>{escape(info.get('summary', ''))} {escape(info.get('description', ''))}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Errors are JSON "
        '<code>{"detail": message}</code>: a 4xx for the request, a 503 with Retry-After for a busy or '
        "unreachable database.</p>",
    ]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            out.append(f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>")
            text = op.get("description") or op.get("summary") or ""
            out.append(f"<p>{escape(text)}</p>")
            params = op.get("parameters", [])
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>limits</th><th>meaning</th></tr>")
                for p in params:
                    schema = p.get("schema", {})
                    required = " (required)" if p.get("required") else ""
                    out.append(
                        f"<tr><td><code>{escape(p['name'])}</code>{required}</td><td>{escape(p.get('in', ''))}</td>"
                        f"<td>{escape(_type(schema))}</td><td>{escape(_constraints(schema))}</td>"
                        f"<td>{escape(p.get('description') or schema.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            for status, response in op.get("responses", {}).items():
                kinds = ", ".join(response.get("content", {})) or "no body"
                out.append(
                    f"<p><b>{escape(status)}</b> {escape(response.get('description', ''))} <i>({escape(kinds)})</i></p>"
                )
    out.append("</body></html>")
    return "\n".join(out)
