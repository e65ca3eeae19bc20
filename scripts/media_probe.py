"""Probe of issue 14 item 6 (media storage bounded and collected), against an in-process app.

Runs the same HTTP calls on whatever code is on PYTHONPATH, so that the code before and after
the change can be compared:

    PYTHONPATH=$PWD .venv/bin/python scripts/media_probe.py --out /tmp/after.json

Prints a table and writes the numbers to --out. Measures: how many 20 MiB inits one workspace
gets before a refusal; DELETE of an unused media item; what is left of expired uploads and of
a blob no media uses after a collection (if the code has one); and thumbnails asked at many
sizes: renders (distinct sizes cached), files written, time, and whether a second workspace's
first request for the same bytes is answered from the first one's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import func, select, update

from vectorsvc.app import create_app
from vectorsvc.auth.keys import create_api_key
from vectorsvc.config import Settings
from vectorsvc.db.tables import MediaUpload
from vectorsvc.workspaces.service import create_workspace

MIB = 1024 * 1024


def photo(size: tuple[int, int]) -> bytes:
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize(size, Image.Resampling.BICUBIC)  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def main(out: Path, sizes_step: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            create_dev_workspace=False,
            preload_models="",
            warm_store=False,
            rate_limit_per_minute=0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            state = app.state.vectorsvc
            db = state.db
            keys = {}
            with db.session() as session:
                for name in ("alpha", "beta", "gamma"):
                    ws = create_workspace(session, name=name)
                    keys[name] = create_api_key(session, workspace=ws).plaintext
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:

                def headers(name: str) -> dict[str, str]:
                    return {"X-API-Key": keys[name]}

                async def init(name: str, size: int, content_type: str = "image/jpeg") -> Any:
                    return await client.post(
                        "/api/media/upload/init",
                        json={
                            "filename": "x.jpg",
                            "content_type": content_type,
                            "media_type": "image",
                            "size_bytes": size,
                        },
                        headers=headers(name),
                    )

                async def upload(name: str, data: bytes) -> dict[str, Any]:
                    ticket = (await init(name, len(data))).json()
                    await client.put(ticket["upload_url"], content=data)
                    r = await client.post(
                        "/api/media/upload/complete",
                        json={"upload_id": ticket["upload_id"]},
                        headers=headers(name),
                    )
                    body: dict[str, Any] = r.json()
                    return body

                # 1. Quota: 20 MiB inits from one workspace until refused (at most 200).
                accepted, refusal = 0, None
                for _ in range(200):
                    r = await init("gamma", 20 * MIB)
                    if r.status_code != 200:
                        refusal = (r.status_code, r.json()["error"]["code"])
                        break
                    accepted += 1
                results["quota"] = {
                    "inits_of_20_MiB_accepted": accepted,
                    "declared_GiB": round(accepted * 20 / 1024, 2),
                    "refusal": refusal,
                }

                # 2. Delete an unused media item.
                small = photo((320, 213))
                done = await upload("alpha", small)
                r = await client.delete(f"/api/media/{done['media_ref']}", headers=headers("alpha"))
                blob = settings.media_dir / "blobs" / done["sha256"][:2] / done["sha256"]
                results["delete"] = {"status": r.status_code, "blob_left": blob.exists()}

                # 3. Expired uploads and an unused blob, then a collection if the code has one.
                expired_ids = []
                for _ in range(5):
                    ticket = (await init("alpha", len(small))).json()
                    await client.put(ticket["upload_url"], content=small + b"")
                    expired_ids.append(ticket["upload_id"])
                with db.session() as session:
                    session.execute(
                        update(MediaUpload)
                        .where(MediaUpload.id.in_(expired_ids))
                        .values(expires_at=datetime.now(UTC) - timedelta(days=2))
                    )
                orphan = b"a blob no media row uses"
                sha = hashlib.sha256(orphan).hexdigest()
                orphan_path = settings.media_dir / "blobs" / sha[:2] / sha
                orphan_path.parent.mkdir(parents=True, exist_ok=True)
                orphan_path.write_bytes(orphan)
                collect = getattr(state.media, "collect", None)
                if collect is not None:
                    collect()
                else:
                    state.media.sweep_expired()
                with db.session() as session:
                    rows = session.scalar(
                        select(func.count())
                        .select_from(MediaUpload)
                        .where(MediaUpload.id.in_(expired_ids))
                    )
                incoming = len(list((settings.media_dir / "incoming").iterdir()))
                results["collection"] = {
                    "has_collect": collect is not None,
                    "expired_upload_rows_left": rows,
                    "incoming_files_left": incoming,
                    "orphan_blob_left": orphan_path.exists(),
                }

                # 4. Thumbnails at many sizes of one 2400x1600 JPEG.
                big = photo((2400, 1600))
                mine = await upload("alpha", big)
                sides = list(range(16, 2049, sizes_step))
                started = time.perf_counter()
                for side in sides:
                    r = await client.get(
                        f"/api/media/{mine['media_ref']}/thumbnail?max_side={side}",
                        headers=headers("alpha"),
                    )
                    assert r.status_code == 200, r.text
                many_s = time.perf_counter() - started
                blob_dir = settings.media_dir / "blobs" / mine["sha256"][:2]
                files = [p for p in blob_dir.iterdir() if ".thumb" in p.name]
                cache = getattr(state.media, "thumbnails", None)
                # The code before wrote one file per render.
                renders = cache.misses if cache is not None else len(files)

                # Cross-workspace, over 5 images: alpha has the 256 thumbnail cached; beta
                # uploads the same bytes and asks first. Medians of: beta's first answer,
                # alpha's cached one, and a cold render of bytes nobody asked for before.
                async def timed(name: str, ref: str) -> float:
                    t0 = time.perf_counter()
                    r = await client.get(
                        f"/api/media/{ref}/thumbnail?max_side=256", headers=headers(name)
                    )
                    assert r.status_code == 200, r.text
                    return (time.perf_counter() - t0) * 1000

                beta_first, alpha_cached, cold = [], [], []
                for n in range(5):
                    data = photo((2400, 1602 + n))
                    a = await upload("alpha", data)
                    cold.append(await timed("alpha", a["media_ref"]))
                    alpha_cached.append(await timed("alpha", a["media_ref"]))
                    b = await upload("beta", data)
                    beta_first.append(await timed("beta", b["media_ref"]))
                beta_first_ms = statistics.median(beta_first)
                alpha_cached_ms = statistics.median(alpha_cached)
                cold_ms = statistics.median(cold)
                results["thumbnails"] = {
                    "sizes_asked": len(sides),
                    "renders": renders,
                    "files_written_beside_blob": len(files),
                    "seconds_for_all_sizes": round(many_s, 2),
                    "beta_first_request_ms": round(beta_first_ms, 1),
                    "alpha_cached_ms": round(alpha_cached_ms, 1),
                    "cold_render_ms": round(cold_ms, 1),
                }
    out.write_text(json.dumps(results, indent=2))
    for section, values in results.items():
        for key, value in values.items():
            print(f"{section:<12} {key:<28} {value}")  # noqa: T201
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("media_probe.json"))
    parser.add_argument("--sizes-step", type=int, default=8, help="step between max_side values")
    args = parser.parse_args()
    asyncio.run(main(args.out, args.sizes_step))
