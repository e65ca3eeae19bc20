"""The real service under uvicorn on a loopback port, for the client and its commands.

One server per module (model loads are shared by the whole session); each test takes its
own workspace, so their knowledge bases, usage and wallets never mix.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedders.base import Embedder
from tests.harness import make_settings
from tests.helpers import uvicorn_in_thread
from vectorsvc.auth.keys import create_api_key
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
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
    module_database_url: str | None,
) -> Iterator[LiveService]:
    settings = make_settings(
        tmp_path_factory.mktemp("client-data"), models_dir, database_url=module_database_url
    )
    with uvicorn_in_thread(settings, embedder_loader) as base_url:
        db = Database(settings.resolved_database_url)
        try:
            yield LiveService(base_url=base_url, settings=settings, db=db)
        finally:
            db.close()


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
    from tests.harness import SCIFACT_DIR

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
