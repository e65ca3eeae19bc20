"""Load: 32 concurrent clients mix index, search and delete against a real server.

Each client owns an id range in one shared scope: it indexes new items (sometimes
re-indexing one of its own with new text), searches, and deletes some of its own ids. Every
answer must be a 200 with the right counts, and at the end the knowledge base holds exactly
the union of what the clients expect. The duration is `VECTORSVC_LOAD_SECONDS` (default 60).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability._server import ServerProcess, create_keys, item_ids

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "all-minilm-l6-v2"
SCOPE = "load"
CLIENTS = 32
DURATION_S = float(os.environ.get("VECTORSVC_LOAD_SECONDS", "60"))
WORDS = (
    "harbor lantern meadow granite falcon copper orchard glacier violin ember canyon "
    "thistle compass marble saffron tundra beacon willow quartz monsoon"
).split()


@dataclass
class ClientTally:
    expected: set[str] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=lambda: {"index": 0, "search": 0, "delete": 0})
    errors: list[str] = field(default_factory=list)


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))


async def run_client(
    client: httpx.AsyncClient, number: int, deadline: float, tally: ClientTally
) -> None:
    rng = random.Random(number)
    next_id = 0

    async def run(body: dict[str, Any]) -> dict[str, Any] | None:
        body = {"model": MODEL, "scope": SCOPE, **body}
        try:
            r = await client.post("/api/runs", json=body)
        except httpx.HTTPError as exc:
            tally.errors.append(f"client {number} {body['mode']}: {type(exc).__name__} {exc}")
            return None
        if r.status_code != 200:
            tally.errors.append(f"client {number} {body['mode']}: {r.status_code} {r.text[:300]}")
            return None
        tally.ops[body["mode"]] += 1
        output: dict[str, Any] = r.json()["output"]
        return output

    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.5 or not tally.expected:
            fresh = [f"c{number:02d}-{next_id + i:05d}" for i in range(rng.randint(1, 8))]
            next_id += len(fresh)
            # Now and then, re-index one of our own items with new text (an update).
            updated = [rng.choice(sorted(tally.expected))] if tally.expected and roll < 0.1 else []
            items = [
                {"id": i, "text": sentence(rng), "metadata": {"client": number}}
                for i in fresh + updated
            ]
            out = await run({"mode": "index", "input": {"items": items}})
            if out is not None:
                if out["counts"]["created"] != len(fresh):
                    tally.errors.append(f"client {number} index counts {out['counts']}")
                tally.expected.update(fresh)
        elif roll < 0.85:
            top_k = rng.randint(1, 10)
            out = await run(
                {"mode": "search", "input": {"text": sentence(rng)}, "params": {"top_k": top_k}}
            )
            if out is not None and len(out["hits"]) > top_k:
                tally.errors.append(f"client {number} search returned {len(out['hits'])} hits")
        else:
            doomed = rng.sample(sorted(tally.expected), min(len(tally.expected), rng.randint(1, 4)))
            out = await run({"mode": "delete", "input": {"ids": doomed}})
            if out is not None:
                if out["deleted"] != len(doomed):
                    tally.errors.append(f"client {number} deleted {out['deleted']} of {doomed}")
                tally.expected.difference_update(doomed)


async def test_32_clients_mixing_index_search_delete(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = create_keys(data_dir, "load")["load"]
    server = ServerProcess(
        data_dir,
        tmp_path / "service.log",
        env={
            "VECTORSVC_RATE_LIMIT_PER_MINUTE": "1000000",
            "VECTORSVC_RATE_LIMIT_BURST": "100000",
        },
    )
    server.start()
    try:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=server.url, headers={"X-API-Key": key}, timeout=300, limits=limits
        ) as client:
            deadline = time.monotonic() + DURATION_S
            tallies = [ClientTally() for _ in range(CLIENTS)]
            await asyncio.gather(
                *(run_client(client, n, deadline, tallies[n]) for n in range(CLIENTS))
            )
            errors = [e for t in tallies for e in t.errors]
            assert not errors, errors[:10]
            ops = {
                mode: sum(t.ops[mode] for t in tallies) for mode in ("index", "search", "delete")
            }
            assert all(ops[mode] > 0 for mode in ops), ops
            # Every client got work done (no one starved).
            assert all(sum(t.ops.values()) > 0 for t in tallies)

            expected = set().union(*(t.expected for t in tallies))
            with httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as reader:
                listed = item_ids(reader, MODEL, SCOPE)
            assert len(listed) == len(set(listed))
            assert set(listed) == expected, (
                f"missing {sorted(expected - set(listed))[:5]}, "
                f"extra {sorted(set(listed) - expected)[:5]}"
            )
            r = await client.get("/api/knowledge-bases", params={"model": MODEL})
            (entry,) = [e for e in r.json()["data"] if e["scope"] == SCOPE]
            assert entry["point_count"] == len(expected)
            # No server error was logged under load.
            logged = server.log_text().splitlines()
            errors = [line for line in logged if '"level": "error"' in line]
            assert not errors, errors[:3]
    finally:
        server.stop()
