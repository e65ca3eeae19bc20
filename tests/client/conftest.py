"""The real service under uvicorn on a loopback port, for the client and its commands.

One server per module (model loads are shared by the whole session); each test takes its
own workspace, so their knowledge bases, usage and wallets never mix.
"""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from embedders.base import Embedder
from tests.conftest import make_settings
from vectorsvc.app import create_app
from vectorsvc.auth.keys import create_api_key
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.models.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace, find_workspace

SCIFACT_DOCS = 200


@dataclass
class LiveService:
    base_url: str
    settings: Settings
    db: Database

    def new_key(self, workspace: str) -> str:
        with self.db.session() as session:
            ws = find_workspace(session, name=workspace) or create_workspace(
                session, name=workspace
            )
            return create_api_key(session, workspace=ws).plaintext


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
) -> Iterator[LiveService]:
    settings = make_settings(tmp_path_factory.mktemp("client-data"), models_dir)
    app = create_app(settings, embedder_loader=embedder_loader)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free port chosen by the OS: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    db = Database(settings.resolved_database_url)
    try:
        yield LiveService(base_url=f"http://127.0.0.1:{port}", settings=settings, db=db)
    finally:
        db.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def background_runs(live: LiveService) -> None:
    """Skip unless the service has background runs (`GET /api/runs/{id}`, issue 6): before
    they land, an unknown run id is a "no route" 404 rather than the service's own."""
    r = httpx.get(f"{live.base_url}/api/runs/run_0", headers={"X-API-Key": "x"})
    if r.status_code == 404 and r.json()["error"]["code"] == "not_found":
        pytest.skip("GET /api/runs/{id} is not in this build yet")


_workspaces = itertools.count()


@pytest.fixture
def key(live: LiveService) -> str:
    """An API key of a workspace of this test's own."""
    return live.new_key(f"client-{next(_workspaces)}")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Resume state goes under the test's temp dir, never the user's ~/.cache; the
    # gateway variables of the developer's shell must not leak in.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AIMP_GATEWAY_URL", raising=False)
    monkeypatch.delenv("AIMP_API_KEY", raising=False)


@pytest.fixture(scope="module")
def scifact_docs() -> list[dict[str, str]]:
    """The first SciFact documents as {id, title, text} (title + " " + text as text)."""
    from tests.conftest import SCIFACT_DIR

    corpus = SCIFACT_DIR / "corpus.jsonl.gz"
    if not corpus.exists():
        pytest.skip(
            f"SciFact not found at {corpus} (it lives in ../shared, absent in a user's clone)"
        )
    docs = []
    with gzip.open(corpus, "rt", encoding="utf-8") as lines:
        for line in itertools.islice(lines, SCIFACT_DOCS):
            row = json.loads(line)
            docs.append(
                {
                    "id": row["_id"],
                    "title": row["title"],
                    "text": f"{row['title']} {row['text']}".strip(),
                }
            )
    return docs


def write_jsonl(path: Path, docs: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for n, doc in enumerate(docs):
            # Metadata both ways the reader takes it: a nested object and a plain key.
            row: dict[str, object] = {
                "id": doc["id"],
                "text": doc["text"],
                "metadata": {"source": "scifact"},
                "position": n,
            }
            out.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def scifact_jsonl(tmp_path: Path, scifact_docs: list[dict[str, str]]) -> Path:
    return write_jsonl(tmp_path / "scifact.jsonl", scifact_docs)
