"""Every stored point is paid exactly once: SIGKILL between a write and its charge.

Four workspaces each index batches of 32 new items through one client thread. The service
runs with its store's writes held open for a moment after they land (`_held_writes.py`),
and the test kills it with SIGKILL right after a write landed, five times: each kill leaves
a write stored and not yet charged. After the restarts, per workspace, the points stored
equal the items billed, every acknowledged item is stored, and nothing never sent is.

`scripts/probe_paid_writes.py` runs the same with kills at random moments (`--hold-s 0`).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability._server import ServerProcess, create_keys, item_ids
from tests.reliability.test_crash import MODEL, SCOPE, Ledger, acked_batches, ingest

HELD_WRITES = Path(__file__).with_name("_held_writes.py")
WORKSPACES = ("north", "east", "south", "west")

pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    """One workspace after the kills: what it was told, what is stored, what is billed."""

    name: str
    acked: int
    sent: int
    stored: int
    billed: int
    lost: int  # acknowledged, not stored
    never_sent: int  # stored, never sent


def total_acked(ledgers: dict[str, Ledger]) -> int:
    return sum(acked_batches(ledger) for ledger in ledgers.values())


def wait_until(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def held_writes(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def kill_during_ingest(
    tmp_path: Path, *, kills: int, hold_s: float, seed: int, code_dir: Path | None = None
) -> tuple[list[Outcome], ServerProcess, dict[str, Ledger]]:
    """Ingest from one thread per workspace, SIGKILL `kills` times (right after a write
    landed when `hold_s` > 0, else at random moments), restart, and count per workspace.
    `code_dir` runs the service from another checkout (the probe's "before")."""
    data_dir = tmp_path / "data"
    keys = create_keys(data_dir, *WORKSPACES)
    marker = tmp_path / "held-writes.log"
    env = {
        "VECTORSVC_TEST_HELD_WRITES_MARKER": str(marker),
        "VECTORSVC_TEST_HELD_WRITES_S": str(hold_s),
    }
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir)
    command = [sys.executable, str(HELD_WRITES)] if hold_s > 0 else None
    server = ServerProcess(data_dir, tmp_path / "service.log", env=env, command=command)
    rng = random.Random(seed)
    ledgers = {name: Ledger() for name in WORKSPACES}
    stop = threading.Event()
    server.start()
    clients = [
        threading.Thread(target=ingest, args=(server.url, keys[name], ledgers[name], stop))
        for name in WORKSPACES
    ]
    try:
        for client in clients:
            client.start()
        for _ in range(kills):
            since = total_acked(ledgers)
            wait_until(lambda n=since: total_acked(ledgers) > n, "the ingest made no progress")
            if hold_s > 0:
                landed = held_writes(marker)
                wait_until(lambda n=landed: held_writes(marker) > n, "no write landed")
            else:
                time.sleep(rng.uniform(0.1, 2.0))
            server.kill()
            server.start()
        since = total_acked(ledgers)
        wait_until(lambda: total_acked(ledgers) > since + 2, "no progress after the restarts")
    finally:
        stop.set()
        for client in clients:
            client.join(120)
    try:
        return [count(server, keys[n], n, ledgers[n]) for n in WORKSPACES], server, ledgers
    except BaseException:
        server.stop()
        raise


def count(server: ServerProcess, key: str, name: str, ledger: Ledger) -> Outcome:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60) as client:
        stored = set(item_ids(client, MODEL, SCOPE))
        r = client.get("/api/billing/usage/summary", params={"group_by": "mode"})
        assert r.status_code == 200, r.text
        billed = sum(g["items"] for g in r.json()["groups"] if g["key"] == "index")
    with ledger.lock:
        return Outcome(
            name=name,
            acked=len(ledger.acked),
            sent=len(ledger.sent),
            stored=len(stored),
            billed=billed,
            lost=len(set(ledger.acked) - stored),
            never_sent=len(stored - ledger.sent),
        )


def test_every_stored_point_is_paid_after_five_kill_9s_between_write_and_charge(
    tmp_path: Path,
) -> None:
    outcomes, server, ledgers = kill_during_ingest(tmp_path, kills=5, hold_s=0.2, seed=14)
    try:
        for ledger in ledgers.values():
            assert not ledger.unexpected, ledger.unexpected[:5]
        assert sum(ledger.uncertain_batches for ledger in ledgers.values()) >= 5
        for outcome in outcomes:
            assert outcome.lost == 0, outcome
            assert outcome.never_sent == 0, outcome
            assert outcome.stored == outcome.billed, outcome
        errors = [line for line in server.log_text().splitlines() if '"level": "error"' in line]
        assert not errors, errors[:3]
    finally:
        server.stop()
