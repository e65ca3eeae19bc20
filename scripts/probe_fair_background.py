#!/usr/bin/env python3
"""Issue 14, item 5: another workspace's 1-item background run behind a large queue.

    PYTHONPATH=$PWD .venv/bin/python scripts/probe_fair_background.py [--items 12000]

Starts `vectorsvc serve` on a fresh data dir (real MiniLM), lets workspace `big` queue one
background run of `--items` short texts, waits until it is running, then queues a 1-item
run in workspace `small` and polls it every 50 ms. Prints how long the small run took from
its 202 to `succeeded`, how many chunks of the big run were charged in between (from the
usage records, in the order they were written), and how far the big run had got; writes
bench/probe_fair_background.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, prepare, print_table, serve, write_results  # noqa: E402

from vectorsvc.db.database import Database  # noqa: E402
from vectorsvc.db.tables import UsageRecord  # noqa: E402

MODEL = "all-minilm-l6-v2"
TOPICS = ["astronomy", "cooking", "football", "chemistry", "poetry", "sailing"]


def texts(n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "text": f"Note {i} about {TOPICS[i % len(TOPICS)]} and details."}
        for i in range(n)
    ]


def submit(client: httpx.Client, key: str, items: list[dict[str, Any]]) -> str:
    r = client.post(
        "/api/runs",
        json={
            "model": MODEL,
            "mode": "index",
            "scope": "probe",
            "input": {"items": items},
            "options": {"background": True},
        },
        headers={"X-API-Key": key},
    )
    r.raise_for_status()
    run_id: str = r.json()["id"]
    return run_id


def status(client: httpx.Client, key: str, run_id: str) -> dict[str, Any]:
    r = client.get(f"/api/runs/{run_id}", headers={"X-API-Key": key})
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=12_000, help="items the big run queues")
    parser.add_argument("--chunk", type=int, default=64, help="VECTORSVC_BACKGROUND_CHUNK_SIZE")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "probe_fair_background.json")
    args = parser.parse_args()
    env = {
        "VECTORSVC_BACKGROUND_CHUNK_SIZE": str(args.chunk),
        "VECTORSVC_RATE_LIMIT_PER_MINUTE": "0",
        "VECTORSVC_WARM_STORE": "false",
    }
    with tempfile.TemporaryDirectory(prefix="vectorsvc-probe-") as tmp:
        data_dir = Path(tmp) / "data"
        big = prepare(data_dir, "big")
        small = prepare(data_dir, "small")
        with (
            serve(big, env, log_path=Path(tmp) / "service.log") as svc,
            httpx.Client(base_url=svc.url, timeout=600) as client,
        ):
            big_started = time.perf_counter()
            big_id = submit(client, big.key, texts(args.items, "big"))
            while status(client, big.key, big_id)["progress"]["done"] < args.chunk:
                time.sleep(0.05)
            big_done_at_submit = status(client, big.key, big_id)["progress"]["done"]
            submitted = time.perf_counter()
            small_id = submit(client, small.key, texts(1, "small"))
            while (run := status(client, small.key, small_id))["status"] in ("queued", "running"):
                time.sleep(0.05)
            small_seconds = time.perf_counter() - submitted
            big_at_small_end = status(client, big.key, big_id)
            while (big_run := status(client, big.key, big_id))["status"] in ("queued", "running"):
                time.sleep(0.2)
            big_seconds = time.perf_counter() - big_started
        db = Database(f"sqlite:///{data_dir / 'vectorsvc.db'}")
        with db.session() as session:
            small_record = session.scalar(
                select(UsageRecord.id).where(UsageRecord.run_id.like(f"{small_id}:%"))
            )
            big_chunks_before_small = session.scalar(
                select(func.count(UsageRecord.id)).where(
                    UsageRecord.run_id.like(f"{big_id}:%"), UsageRecord.id < (small_record or 0)
                )
            )
        db.close()
    chunks_at_submit = big_done_at_submit // args.chunk
    results = {
        "items_queued_by_big": args.items,
        "chunk_size": args.chunk,
        "small_status": run["status"],
        "small_seconds_from_202_to_succeeded": round(small_seconds, 2),
        "big_chunks_charged_when_small_was_queued": chunks_at_submit,
        "big_chunks_charged_before_small": big_chunks_before_small,
        "big_chunks_small_waited_for": (big_chunks_before_small or 0) - chunks_at_submit,
        "big_progress_when_small_succeeded": big_at_small_end["progress"],
        "big_status": big_run["status"],
        "big_seconds_total": round(big_seconds, 1),
    }
    print_table(
        f"1-item run of another workspace behind {args.items} queued items",
        [(k, str(v)) for k, v in results.items()],
    )
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
