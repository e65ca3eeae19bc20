"""Browser-test fixtures: the real service on a loopback port, headless Debian Chromium
driven by Playwright, and a screenshot in `test-artifacts/` when a test fails."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedders.base import Embedder
from tests.harness import make_settings
from tests.helpers import uvicorn_in_thread
from vectorsvc.accounts.service import create_user
from vectorsvc.auth.keys import create_api_key
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace, find_workspace

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Short enough that a test can wait it out and watch the page refresh its token.
ACCESS_TOKEN_TTL_S = 3


@dataclass
class LiveServer:
    base_url: str
    settings: Settings
    db: Database
    keys: dict[str, str] = field(default_factory=dict)

    def api_key(self, workspace: str) -> str:
        """An API key of `workspace` (created with the workspace on first use)."""
        if workspace not in self.keys:
            with self.db.session() as session:
                ws = find_workspace(session, name=workspace) or create_workspace(
                    session, name=workspace
                )
                self.keys[workspace] = create_api_key(session, workspace=ws).plaintext
        return self.keys[workspace]

    def add_user(self, *, email: str, password: str, workspace: str) -> None:
        self.api_key(workspace)
        with self.db.session() as session:
            ws = find_workspace(session, name=workspace)
            assert ws is not None
            create_user(session, email=email, password=password, workspace=ws)

    def run(self, workspace: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(
            f"{self.base_url}/api/runs",
            json=body,
            headers={"X-API-Key": self.api_key(workspace)},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


@pytest.fixture
def live_server(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> Iterator[LiveServer]:
    """The real app under uvicorn in a thread: the page needs a real HTTP server."""
    settings = make_settings(tmp_path / "data", models_dir, access_token_ttl_s=ACCESS_TOKEN_TTL_S)
    with uvicorn_in_thread(settings, embedder_loader) as base_url:
        db = Database(settings.resolved_database_url)
        try:
            yield LiveServer(base_url=base_url, settings=settings, db=db)
        finally:
            db.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Generator[Any, None, None]:
    """A Chromium page at laptop size; screenshot to test-artifacts/ if the test fails."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("Chromium is not installed: run scripts/install-browser.sh (make pytest does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            context.close()
            browser.close()
