"""Write-ahead intents: start-up settles what a crash between upsert and charge left.

A crash is reproduced by leaving exactly what one leaves: the intent, and the points
stored by the real write path, without their charge.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.runs.test_background import finished, wait_for
from tests.runs.test_paid_writes import (
    MODEL,
    PRICE,
    billed_items,
    index_body,
    stored_count,
    texts,
    usage_records,
    workspace_of,
)
from vectorsvc.billing import service as billing
from vectorsvc.db.tables import BackgroundRun, PendingWrite
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.runs import writes
from vectorsvc.runs.chunking import chunk_points, plan_chunks
from vectorsvc.runs.content import embed_prepared, prepare
from vectorsvc.runs.gate import run_context
from vectorsvc.runs.inputs import IndexItem
from vectorsvc.runs.intents import ChunkProgress, WriteIntent
from vectorsvc.runs.pipeline import item_contents, plan_index
from vectorsvc.runs.schemas import RunRequest

pytestmark = pytest.mark.anyio


def pending_keys(service: Service) -> list[str]:
    with service.db.session() as session:
        return list(session.scalars(select(PendingWrite.key)))


async def write_without_charge(
    service: Service,
    workspace: str,
    scope: str,
    items: list[dict[str, Any]],
    *,
    upsert: bool = True,
    key: str | None = None,
    chunk: Callable[[str, list[str]], ChunkProgress] | None = None,
    writer: str | None = None,
) -> WriteIntent:
    """What SIGKILL between the upsert and the charge leaves: the intent, the points, no
    charge (with `upsert=False`, a kill before the upsert: the intent alone)."""
    state = service.app.state.vectorsvc
    request = RunRequest.model_validate(index_body(items, scope))
    ctx = run_context(state, workspace_id=workspace_of(service, workspace), request=request)
    run_id = writer or ctx.run_id
    parsed = [IndexItem.model_validate(i) for i in items]
    prepared = await prepare(
        state, model=ctx.model, workspace_id=ctx.workspace_id, contents=item_contents(parsed)
    )
    plan = plan_index(state, ctx.model, ctx.ns, parsed, prepared, run_id, range(len(parsed)))
    chunked = await plan_chunks(
        state,
        model=ctx.model,
        ns=ctx.ns,
        items=parsed,
        prepared=prepared,
        indexes=plan.to_embed,
        stored_counts=plan.stored_chunks,
    )
    vectors, failures = await embed_prepared(
        state, model=ctx.model, prepared=chunked.embed, purpose="document"
    )
    assert not failures
    points = chunk_points(ctx.model, ctx.ns, parsed, chunked, plan.hashes, vectors, set(), run_id)
    intent = WriteIntent(
        key=key or run_id,
        writer=run_id,
        ns=ctx.ns,
        modality="text",
        point_ids=[p.id for p in points],
        chunk=chunk(run_id, [i["id"] for i in items]) if chunk is not None else None,
    )
    if upsert:
        writes._upsert(state, ctx.model, intent, points)
    else:
        with state.db.session() as session:
            writes.intents.record(session, intent)
    return intent


async def test_start_up_charges_an_interrupted_write_exactly_once(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, default_workspace_credits=0)
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        svc.new_key("poor")
        acme = workspace_of(svc, "acme")
        poor = workspace_of(svc, "poor")
        billing.top_up(svc.db, workspace_id=acme, micro_credits=1_000_000)
        cut = await write_without_charge(svc, "acme", "docs", texts(3))
        early = await write_without_charge(svc, "acme", "docs", texts(2, "early"), upsert=False)
        unaffordable = await write_without_charge(svc, "poor", "docs", texts(2))
        # As a crash leaves it: stored, not charged.
        assert stored_count(svc, acme, "docs") == 3
        assert billed_items(svc, acme) == 0
        assert sorted(pending_keys(svc)) == sorted([cut.key, early.key, unaffordable.key])

    for _ in range(2):  # a second start finds nothing left to do
        async with running_service(settings, embedder_loader) as svc:
            assert pending_keys(svc) == []
            assert usage_records(svc, acme) == [(cut.key, 3, 3 * PRICE)]
            assert stored_count(svc, acme, "docs") == 3
            assert billing.current_balance(svc.db, workspace_id=acme) == 1_000_000 - 3 * PRICE
            # The wallet that cannot pay: its points are removed, nothing is charged.
            assert stored_count(svc, poor, "docs") == 0
            assert usage_records(svc, poor) == []
            kbs = await svc.client.get("/api/knowledge-bases", headers={"X-API-Key": key})
            assert [(e["scope"], e["point_count"]) for e in kbs.json()["data"]] == [("docs", 3)]

    async with running_service(settings, embedder_loader) as svc:
        # The client's retry of the cut run: deduped, and already paid.
        r = await svc.run(key, index_body(texts(3), "docs"))
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert (usage["items"], usage["skipped"]) == (0, 3)
        assert billed_items(svc, acme) == 3


async def test_start_up_commits_an_interrupted_background_chunk_with_its_progress(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, background_chunk_size=4)
    items = texts(6, "bg")
    run_id = "run_0123456789abcdef0123"
    async with running_service(settings, embedder_loader) as svc:
        key = svc.new_key("acme")
        acme = workspace_of(svc, "acme")
        await svc.app.state.background_runs.stop()  # the worker must not pick the run up yet
        with svc.db.session() as session:
            session.add(
                BackgroundRun(
                    id=run_id,
                    workspace_id=acme,
                    model=MODEL,
                    mode="index",
                    scope="bg",
                    status="running",
                    total=len(items),
                    next_index=0,
                    done=0,
                    skipped=0,
                    failed=0,
                    errors=[],
                    cost=0,
                    cancel_requested=False,
                    embed_seconds=0.0,
                    write_seconds=0.0,
                )
            )
        (settings.data_dir / "runs").mkdir(parents=True, exist_ok=True)
        (settings.data_dir / "runs" / f"{run_id}.json").write_text(json.dumps(items))

        def chunk(writer: str, ids: list[str]) -> ChunkProgress:
            return ChunkProgress(
                run_id=writer,
                start=0,
                end=4,
                skipped=0,
                failures=[],
                embed_seconds=0.1,
                positions=list(range(len(ids))),
                item_ids=ids,
            )

        await write_without_charge(
            svc, "acme", "bg", items[:4], key=f"{run_id}:0", chunk=chunk, writer=run_id
        )

    async with running_service(settings, embedder_loader) as svc:
        run = await wait_for(svc, key, run_id, finished)
        assert run["status"] == "succeeded", run
        assert run["progress"] == {"total": 6, "done": 6, "skipped": 0, "failed": 0}
        assert stored_count(svc, acme, "bg") == 6
        # The first chunk was charged at start-up, once; the resumed run charged the rest.
        assert usage_records(svc, acme) == [
            (f"{run_id}:0", 4, 4 * PRICE),
            (f"{run_id}:4", 2, 2 * PRICE),
        ]
        assert run["usage"]["items"] == 6
        assert pending_keys(svc) == []
