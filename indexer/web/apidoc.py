"""An API reference page rendered from the app's own OpenAPI schema, with no assets.

FastAPI's ``/docs`` fetches Swagger UI from a CDN, which an offline archive machine
cannot reach; this page needs nothing but the server.
"""

from __future__ import annotations

from html import escape
from typing import Any

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
        '<code>{"detail": message}</code> with a 4xx status.</p>',
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
