"""Crash safety: SIGKILL the service five times at random points during a large ingest.

A client thread indexes batches of 32 texts with distinct ids and records which batches the
service acknowledged (200). The main thread kills the process at seeded random moments and
restarts it on the same data dir. Afterwards every acknowledged item is stored and
searchable, nothing appears that was never sent, and the catalog count, the store's exact
count and a full paging of the items agree.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability._server import ServerProcess, create_keys, item_ids

MODEL = "all-minilm-l6-v2"
SCOPE = "crash"
BATCH = 32
KILLS = 5
SEED = 20260
TOPICS = ("tides", "glaciers", "volcanoes", "orchards", "bridges", "comets", "violins", "bees")

pytestmark = pytest.mark.slow


def item(batch: int, j: int) -> dict[str, Any]:
    n = batch * BATCH + j
    topic = TOPICS[n % len(TOPICS)]
    return {
        "id": f"doc-{batch:05d}-{j:02d}",
        "text": f"Field note {n} on {topic}: observation {n * 7919 % 10007} from site {batch}.",
        "metadata": {"batch": batch, "n": n},
    }


@dataclass
class Ledger:
    """What the client sent and what the service acknowledged."""

    acked: dict[str, str] = field(default_factory=dict)  # id -> text
    sent: set[str] = field(default_factory=set)  # ids of every batch that left the client
    uncertain_batches: int = 0
    acked_batches: int = 0
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def ingest(url: str, key: str, ledger: Ledger, stop: threading.Event) -> None:
    """Index batch after batch until `stop`; a batch whose answer is lost is not retried,
    so the store may hold written-but-unacknowledged items (allowed, and counted)."""
    batch = 0
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
        while not stop.is_set():
            items = [item(batch, j) for j in range(BATCH)]
            body = {"model": MODEL, "mode": "index", "scope": SCOPE, "input": {"items": items}}
            try:
                r = client.post("/api/runs", json=body)
            except httpx.ConnectError:
                time.sleep(0.05)  # nothing was sent: the service is down, retry this batch
                continue
            except httpx.HTTPError:
                with ledger.lock:  # sent, answer lost in the crash: outcome unknown
                    ledger.sent.update(i["id"] for i in items)
                    ledger.uncertain_batches += 1
                batch += 1
                continue
            with ledger.lock:
                ledger.sent.update(i["id"] for i in items)
                if r.status_code == 200:
                    ledger.acked.update((i["id"], i["text"]) for i in items)
                    ledger.acked_batches += 1
                else:
                    ledger.unexpected.append(f"{r.status_code} {r.text[:300]}")
            batch += 1


def acked_batches(ledger: Ledger) -> int:
    with ledger.lock:
        return ledger.acked_batches


def wait_for_progress(ledger: Ledger, more_than: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while acked_batches(ledger) <= more_than:
        assert time.monotonic() < deadline, "the ingest made no progress"
        time.sleep(0.05)


def test_acknowledged_writes_survive_five_kill_9s(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = create_keys(data_dir, "crash")["crash"]
    server = ServerProcess(data_dir, tmp_path / "service.log")
    rng = random.Random(SEED)
    ledger = Ledger()
    stop = threading.Event()
    server.start()
    try:
        client_thread = threading.Thread(target=ingest, args=(server.url, key, ledger, stop))
        client_thread.start()
        try:
            for _ in range(KILLS):
                # At least one batch acknowledged since the last start, then a random moment.
                wait_for_progress(ledger, acked_batches(ledger))
                time.sleep(rng.uniform(0.1, 2.0))
                server.kill()
                server.start()  # the same data dir: the store must open after the crash
            # After the last restart: more acknowledged writes, which also heal the catalog
            # row a crash between the vector write and the catalog update left behind.
            wait_for_progress(ledger, acked_batches(ledger) + 2)
        finally:
            stop.set()
            client_thread.join(120)
        verify(server, key, ledger, rng)
    finally:
        server.stop()


def verify(server: ServerProcess, key: str, ledger: Ledger, rng: random.Random) -> None:
    assert not ledger.unexpected, ledger.unexpected[:5]
    assert ledger.uncertain_batches >= 1, "no kill landed during a request"
    assert len(ledger.acked) >= 5 * BATCH

    with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60) as client:
        assert client.get("/health").json()["status"] == "ok"
        listed = item_ids(client, MODEL, SCOPE)
        present = set(listed)
        assert len(listed) == len(present), "paging returned an item twice"
        lost = set(ledger.acked) - present
        assert not lost, f"{len(lost)} acknowledged items lost, e.g. {sorted(lost)[:5]}"
        assert present <= ledger.sent, "an item that was never sent is stored"

        # Three counts agree: catalog, the store's exact count, and the paging.
        r = client.get("/api/knowledge-bases", params={"model": MODEL})
        (entry,) = [e for e in r.json()["data"] if e["scope"] == SCOPE]
        assert entry["point_count"] == len(present)
        r = client.delete(f"/api/knowledge-bases/{MODEL}/{SCOPE}", params={"dry_run": True})
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(present)

        # Acknowledged means searchable: the exact text finds its item first.
        for item_id in rng.sample(sorted(ledger.acked), 8):
            r = client.post(
                "/api/runs",
                json={
                    "model": MODEL,
                    "mode": "search",
                    "scope": SCOPE,
                    "input": {"text": ledger.acked[item_id]},
                    "params": {"top_k": 1},
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["output"]["hits"][0]["id"] == item_id
    # Clean opens: no error was logged by any of the six starts.
    errors = [line for line in server.log_text().splitlines() if '"level": "error"' in line]
    assert not errors, errors[:3]
