"""The OpenAPI document: every API route once, each with the one error envelope (the
routers' routes go straight into the app's list, see `vectorsvc.app._add_routes`), and
the web pages left out."""

from __future__ import annotations

from pathlib import Path

from vectorsvc.app import create_app
from vectorsvc.config import Settings


def test_every_api_route_is_documented_once_with_the_error_envelope(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    doc = app.openapi()
    operations = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "delete", "patch"}
    ]
    assert ("/api/runs", "post") in {(p, m) for p, m, _ in operations}
    assert {p for p, _, _ in operations} >= {
        "/health",
        "/api/runs/{run_id}",
        "/api/marketplace/models",
        "/api/billing/wallet",
        "/api/media/upload/init",
        "/api/knowledge-bases",
    }
    assert not [p for p, _, _ in operations if not (p.startswith("/api/") or p == "/health")]
    for path, method, op in operations:
        for status in ("4XX", "5XX"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorPublic"}, (path, method)
        assert "422" not in op["responses"], (path, method)  # not FastAPI's default body
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids))
    # Each route is served once: no duplicate (path, method) in the app's own list.
    served = [
        (route.path, method)
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
    ]
    assert len(served) == len(set(served))
