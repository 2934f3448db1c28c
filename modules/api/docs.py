"""/docs that works offline: the operations rendered on the server, Swagger UI on top when its CDN is reachable.

FastAPI's stock page loads Swagger UI from a CDN and shows nothing without the internet; this project runs offline.
"""
from __future__ import annotations

import html

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

OPENAPI_URL = "/openapi.json"


def operations_table(schema: dict) -> str:
    rows = []
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method, operation in operations.items():
            summary = html.escape(operation.get("summary", ""))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{summary}</td></tr>")
    return "<table><tr><th>method</th><th>path</th><th>summary</th></tr>" + "".join(rows) + "</table>"


def docs_page(app: FastAPI) -> str:
    swagger = get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{app.title} - API").body.decode()
    fallback = (f"<section style='font-family:sans-serif;margin:1em'><h2>{html.escape(app.title)} API</h2>"
                f"<p>Full schema: <a href='{OPENAPI_URL}'>{OPENAPI_URL}</a></p>{operations_table(app.openapi())}"
                "</section>")
    return swagger.replace("<body>", "<body>" + fallback, 1)


def add_offline_docs(app: FastAPI) -> None:
    """Call on a FastAPI app created with docs_url=None."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app))
