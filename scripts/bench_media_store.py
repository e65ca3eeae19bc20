"""Media on the local directory against media on S3 (a moto server on loopback), issue 19.3.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_media_store.py --out /tmp/media_store.json

For each store, one in-process app (the same process, models loaded once) measures:
- uploads of distinct ~150 KB JPEG photos: init, PUT and complete, each timed, p50, and
  photos per second for the three together;
- uploads of distinct large bodies (`--large-mb`, above the 8 MiB multipart threshold):
  MB/s of PUT + complete;
- image runs: an `index` run of one photo on `image-similarity` (each fetches its blob and
  decodes it), p50 and p95;
- one blob read through the store (the store's share of each image run), p50;
- thumbnails at first request (a render from the blob, no cache), p50.

moto is a Python process on the same two cores, not S3 across a network: the S3 figures
show the store's own overhead (copies, requests, spooling), not a cloud's latency.
Prints a table; writes the numbers to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.s3server import S3Server, running_s3_server  # noqa: E402
from vectorsvc.app import create_app  # noqa: E402
from vectorsvc.auth.keys import create_api_key  # noqa: E402
from vectorsvc.config import Settings  # noqa: E402
from vectorsvc.workspaces.service import create_workspace  # noqa: E402

MB = 1_000_000
IMAGE_MODEL = "image-similarity"


def photos(count: int) -> list[bytes]:
    from skimage import data

    base = np.asarray(data.chelsea(), dtype=np.int16)
    out = []
    for n in range(count):  # distinct bytes each, so no upload is deduplicated
        shifted = np.clip(base + (n % 7) - 3 + (n // 7), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(shifted).resize((640, 426)).save(buffer, format="JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_store(
    name: str, media: dict[str, Any], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    settings = Settings(
        data_dir=tmp / name,
        models_dir=tmp / "models",
        create_dev_workspace=False,
        preload_models=IMAGE_MODEL,
        warm_store=False,
        rate_limit_per_minute=0,
        max_upload_bytes=64 * 1024 * 1024,
        media_quota_bytes=10 * 1024**3,
        default_workspace_credits=1_000_000,
        **media,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        with app.state.vectorsvc.db.session() as session:
            key = create_api_key(session, workspace=create_workspace(session, name="b")).plaintext
        headers = {"X-API-Key": key}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", timeout=120
        ) as client:

            async def upload(
                data: bytes, content_type: str, kind: str
            ) -> tuple[dict[str, Any], list[float]]:
                t0 = time.perf_counter()
                r = await client.post(
                    "/api/media/upload/init",
                    json={
                        "filename": "x",
                        "content_type": content_type,
                        "media_type": kind,
                        "size_bytes": len(data),
                    },
                    headers=headers,
                )
                ticket = r.json()
                t1 = time.perf_counter()
                r = await client.put(ticket["upload_url"], content=data)
                assert r.status_code == 200, r.text
                t2 = time.perf_counter()
                r = await client.post(
                    "/api/media/upload/complete",
                    json={"upload_id": ticket["upload_id"]},
                    headers=headers,
                )
                assert r.status_code == 200, r.text
                t3 = time.perf_counter()
                return r.json(), [t1 - t0, t2 - t1, t3 - t2]

            small = photos(args.uploads)
            timings, refs, shas = [], [], []
            started = time.perf_counter()
            for data in small:
                done, spent = await upload(data, "image/jpeg", "image")
                timings.append(spent)
                refs.append(done["media_ref"])
                shas.append(done["sha256"])
            small_elapsed = time.perf_counter() - started

            large_spent = []
            for _ in range(args.large):
                data = os.urandom(int(args.large_mb * MB))
                _, spent = await upload(data, "application/octet-stream", "file")
                large_spent.append(spent[1] + spent[2])

            run_ms = []
            for n in range(args.runs + 1):
                item = {"id": f"p{n}", "image": {"media_ref": refs[n % len(refs)]}}
                body = {
                    "model": IMAGE_MODEL,
                    "mode": "index",
                    "scope": "bench",
                    "input": {"items": [item]},
                }
                t0 = time.perf_counter()
                r = await client.post("/api/runs", json=body, headers=headers)
                assert r.status_code == 200, r.text
                if n:  # the first warms the model up
                    run_ms.append((time.perf_counter() - t0) * 1000)

            # The store's share of an image run: fetching one blob (what every decode reads).
            blobs = app.state.vectorsvc.media.blobs
            read_ms = []
            for sha256 in shas:
                t0 = time.perf_counter()
                with blobs.open_blob(sha256) as stream:
                    stream.read()
                read_ms.append((time.perf_counter() - t0) * 1000)

            thumb_ms = []
            for ref in refs:
                t0 = time.perf_counter()
                r = await client.get(f"/api/media/{ref}/thumbnail?max_side=256", headers=headers)
                assert r.status_code == 200
                thumb_ms.append((time.perf_counter() - t0) * 1000)

    per_step = list(zip(*timings, strict=True))
    return {
        "photo_kb": round(statistics.mean(len(d) for d in small) / 1000),
        "init_ms_p50": round(statistics.median(per_step[0]) * 1000, 1),
        "put_ms_p50": round(statistics.median(per_step[1]) * 1000, 1),
        "complete_ms_p50": round(statistics.median(per_step[2]) * 1000, 1),
        "photos_per_s": round(len(small) / small_elapsed, 1),
        "large_mb": args.large_mb,
        "large_put_complete_MB_per_s": round(args.large * args.large_mb / sum(large_spent), 1),
        "image_run_ms_p50": round(statistics.median(run_ms), 1),
        "image_run_ms_p95": round(p(run_ms, 0.95), 1),
        "blob_read_ms_p50": round(statistics.median(read_ms), 2),
        "thumbnail_first_ms_p50": round(statistics.median(thumb_ms), 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, running_s3_server() as server:
        s3: S3Server = server
        for name, value in s3.env().items():
            os.environ[name] = value
        bucket = s3.new_bucket()
        stores = {
            "local": {},
            "s3 (moto)": {"media_url": f"s3://{bucket}/media", "media_s3_endpoint_url": s3.url},
        }
        for name, media in stores.items():
            results[name] = await bench_store(name.split()[0], media, args, Path(tmp))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mb", type=float, default=12.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("media_store.json"))
    args = parser.parse_args()
    results = asyncio.run(main(args))
    rows = list(next(iter(results.values())))
    print(f"{'':32}" + "".join(f"{name:>14}" for name in results))
    for row in rows:
        print(f"{row:32}" + "".join(f"{results[name][row]!s:>14}" for name in results))
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
