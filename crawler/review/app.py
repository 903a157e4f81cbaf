"""The review web app (FastAPI): the page, its JSON API, and a guard on every change.

The page (``crawler/templates/review.html``) lists the stored images of one label at a time,
highest loss first (the images the model finds least like their label), a page at a time, and
sends each mark to the API as it is clicked (:mod:`crawler.review.decisions` records it).

Only the review's own page may change the dataset. The server listens on 127.0.0.1, but any web
page open in the same browser can send requests there, and a DNS-rebinding page can even read
answers. So every state-changing request (``PUT``, ``POST``, ``DELETE``) must:

- carry a ``Host`` whose name is this machine (``127.0.0.1``, ``localhost``, ``::1``) or the
  interface the server was started on (``allowed_hosts``): a rebound name is refused;
- carry no ``Origin``, or the server's own (``http://<Host>``): a request a foreign page
  makes is refused (browsers always send ``Origin`` on these methods);
- carry the ``X-Review-Token`` header with this server's per-session token, a random value
  made at start-up and written into the page, which other origins cannot read.

Anything else gets 403 (OWASP's CSRF guidance: origin verification plus a synchronizer token).
"""

from __future__ import annotations

import html
import math
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Body, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from crawler.catalog import Catalog
from crawler.review.decisions import ReviewError, apply_decisions, decide, open_catalog
from crawler.review.scores import Score, score_of

__all__ = ["LOCAL_HOSTS", "TOKEN_HEADER", "create_app", "label_counts", "list_images"]

#: Host names that always mean this machine.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_HEADER = "X-Review-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def label_counts(catalog: Catalog) -> list[dict[str, Any]]:
    """Per label of stored images: ``{"label", "count", "pending"}``, by label."""
    with catalog.transaction() as tx:
        rows = tx.execute(
            "SELECT i.label, COUNT(*) AS count, COUNT(r.image_id) AS pending FROM images i "
            "LEFT JOIN review r ON r.image_id = i.id AND r.applied_at IS NULL "
            "WHERE i.status = 'stored' GROUP BY i.label ORDER BY i.label"
        ).fetchall()
    return [dict(row) for row in rows]


def list_images(catalog: Catalog, scores: dict[str, Score], label: str, page: int = 1, per_page: int = 24) -> dict[str, Any]:
    """One page of the stored images of ``label``, highest loss first (unscored last)."""
    with catalog.transaction() as tx:
        rows = tx.execute(
            "SELECT i.id, i.path, i.width, i.height, r.action, r.target_label FROM images i "
            "LEFT JOIN review r ON r.image_id = i.id AND r.applied_at IS NULL "
            "WHERE i.status = 'stored' AND i.label = ?",
            (label,),
        ).fetchall()
    items = []
    for row in rows:
        score = score_of(scores, row["path"])
        items.append(
            {
                "id": row["id"],
                "path": row["path"],
                "loss": score.loss if score else None,
                "predicted": score.predicted if score else "",
                "probability": score.probability if score else None,
                "decision": {"action": row["action"], "label": row["target_label"]} if row["action"] else None,
            }
        )
    items.sort(key=lambda item: (item["loss"] is None, -(item["loss"] or 0.0), item["path"]))
    pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(1, page), pages)
    return {
        "label": label,
        "page": page,
        "pages": pages,
        "total": len(items),
        "images": items[(page - 1) * per_page : page * per_page],
    }


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:8001`` -> ``::1``)."""
    return (urlsplit(f"//{host}").hostname or "").lower()


def _refusal(request: Request, token: str, allowed_hosts: frozenset[str]) -> str | None:
    """Why ``request`` may not change the dataset (module doc), or ``None`` when it may."""
    host = request.headers.get("host", "")
    if _host_name(host) not in allowed_hosts:
        return f"Host {host!r} is not this review server"
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/").lower() != f"{request.url.scheme}://{host}".lower():
        return f"requests from {origin} may not change this dataset"
    if not secrets.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
        return "missing or wrong review token: reload the review page"
    return None


def create_app(
    root: str | Path, scores: dict[str, Score], *, per_page: int = 24, allowed_hosts: tuple[str, ...] = (),
    catalog_url: str | None = None,
):
    """The review web app over dataset ``root`` (see module doc).

    Routes: ``GET /`` the page; ``GET /api/labels``; ``GET /api/images?label=&page=``;
    ``GET /image/{id}`` a stored image's bytes; ``PUT /api/decisions/{id}`` with JSON
    ``{"action": "keep"|"delete"|"move", "label": "..."}``; ``DELETE /api/decisions/{id}``;
    ``POST /api/apply``. Errors are 4xx with ``{"detail": "<why>"}``; a state-changing request
    that fails the guard (module doc) is 403. ``allowed_hosts``: host names besides
    :data:`LOCAL_HOSTS` the server is reached by (the ``--host`` it listens on). ``catalog_url``:
    a PostgreSQL catalog (``--catalog-url``) instead of ``root/catalog.sqlite``.

    Raises:
        UserError: ``root`` is not a folder or has no catalog.
    """
    root = Path(root).resolve()
    catalog = open_catalog(root, catalog_url)
    token = secrets.token_urlsafe(32)
    hosts = LOCAL_HOSTS | {name.lower() for name in allowed_hosts}
    page_html = resources.files("crawler").joinpath("templates/review.html").read_text(encoding="utf-8")
    page_html = page_html.replace("{{dataset}}", html.escape(root.name)).replace("{{token}}", token)
    app = FastAPI(title=f"Review {root.name}")
    app.router.on_shutdown.append(catalog.close)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method not in _SAFE_METHODS:
            refusal = _refusal(request, token, hosts)
            if refusal is not None:
                return JSONResponse({"detail": refusal}, status_code=403)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page_html

    @app.get("/api/labels")
    def labels() -> dict[str, Any]:
        counts = label_counts(catalog)
        return {"dataset": root.name, "labels": counts, "pending": sum(c["pending"] for c in counts)}

    @app.get("/api/images")
    def images(label: str, page: int = Query(1, ge=1)) -> dict[str, Any]:
        return list_images(catalog, scores, label, page, per_page)

    @app.get("/image/{image_id}")
    def image(image_id: int) -> FileResponse:
        row = catalog.get(image_id)
        if row is None or row["status"] != "stored" or not row["path"]:
            raise HTTPException(404, f"no stored image with id {image_id}")
        path = (root / row["path"]).resolve()
        if root not in path.parents or not path.is_file():  # a path from the catalog, still checked
            raise HTTPException(404, f"file of image {image_id} not found")
        return FileResponse(path)

    @app.put("/api/decisions/{image_id}")
    def put_decision(image_id: int, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        try:
            return {"decision": decide(catalog, image_id, body.get("action"), body.get("label"))}
        except ReviewError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.delete("/api/decisions/{image_id}")
    def delete_decision(image_id: int) -> dict[str, Any]:
        try:
            return {"decision": decide(catalog, image_id, None)}
        except ReviewError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/api/apply")
    def apply() -> dict[str, Any]:
        try:
            return apply_decisions(root, catalog)
        except OSError as exc:
            raise HTTPException(409, f"apply failed and was rolled back: {exc}") from None

    return app
