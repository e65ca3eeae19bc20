"""The Knowledge Bases web page: static files, no build step.

`/` and `/knowledge-bases` serve the one HTML page; `/static/...` its modules and styles.
The page signs in and calls the API with a short-lived access token; it never holds an
API key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from vectorsvc.json_body import JSONRoute

STATIC_DIR = Path(__file__).parent / "static"

# The page holds tokens, so it runs only its own scripts and is never framed; thumbnails
# are blob: URLs made from authenticated fetches.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False, route_class=JSONRoute)


@router.get("/")
@router.get("/knowledge-bases")
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


def install_web(app: FastAPI) -> None:
    """Add the static mount (a router cannot carry a mount); the app adds `router`."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
