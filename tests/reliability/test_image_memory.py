"""Decoded images stay within a memory budget: peak and retained memory of a `vectorsvc serve`
process through image runs that reference a 7000x7000 PNG (a few hundred KB uploaded, 147 MB
decoded) many times.

Before images were decoded a batch at a time, made small while decoding and shared between
references, 12 references took the service up by 2.8 GB, and it kept all of it (40: 8 GB).
Memory is read from /proc/<pid>/status: VmHWM (the peak, reset through clear_refs before
each run) and VmRSS. `scripts/probe_image_memory.py` prints the same figures for any count.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.reliability._server import ServerProcess, create_keys

MODEL = "image-similarity"
SIDE = 7000
REFS = 12
PEAK_GROWTH_LIMIT_MB = 1536  # the bound: 1.5 GB
RETAINED_LIMIT_MB = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def large_png() -> bytes:
    """SIDE x SIDE RGB of flat shapes: about 430 KB as PNG, 147 MB decoded."""
    image = Image.new("RGB", (SIDE, SIDE), (200, 220, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((1000, 1500, 4000, 5000), fill=(180, 40, 30))
    draw.ellipse((3500, 800, 6500, 3800), fill=(30, 120, 60))
    draw.polygon([(500, 6500), (3500, 4200), (6800, 6800)], fill=(240, 200, 20))
    for i in range(0, SIDE, 350):
        draw.line((i, 0, SIDE - i, SIDE), fill=(20, 20, 80), width=25)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def tagged(png: bytes, tag: str) -> bytes:
    """`png` with a text chunk before IEND: the same pixels, other bytes (a distinct image)."""
    data = b"tag\x00" + tag.encode()
    crc = struct.pack(">I", zlib.crc32(b"tEXt" + data))
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + crc
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def upload(client: httpx.Client, data: bytes) -> str:
    r = client.post(
        "/api/media/upload/init",
        json={
            "filename": "big.png",
            "content_type": "image/png",
            "media_type": "image",
            "size_bytes": len(data),
        },
    )
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert httpx.put(ticket["upload_url"], content=data, timeout=120).status_code == 200
    r = client.post("/api/media/upload/complete", json={"upload_id": ticket["upload_id"]})
    assert r.status_code == 200, r.text
    return str(r.json()["media_ref"])


def execute(client: httpx.Client, refs: list[str]) -> httpx.Response:
    images = [{"media_ref": ref} for ref in refs]
    return client.post(
        "/api/runs", json={"model": MODEL, "mode": "execute", "input": {"images": images}}
    )


class Measured:
    """A service with the image model loaded, and its memory around each run."""

    def __init__(self, server: ServerProcess, client: httpx.Client) -> None:
        self.server = server
        self.client = client

    def run(self, refs: list[str]) -> tuple[httpx.Response, dict[str, int]]:
        pid = self.server.pid
        before = kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        r = execute(self.client, refs)
        peak = kib(pid, "VmHWM")
        after = kib(pid, "VmRSS")
        return r, {
            "before_mb": before // 1024,
            "peak_growth_mb": (peak - before) // 1024,
            "retained_mb": (after - before) // 1024,
        }


@pytest.fixture(scope="module")
def measured(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str | None
) -> Iterator[Measured]:
    root = tmp_path_factory.mktemp("image-memory")
    env = {"VECTORSVC_PRELOAD_MODELS": MODEL}
    if module_database_url:
        env["VECTORSVC_DATABASE_URL"] = module_database_url
    key = create_keys(root / "data", "acme", database_url=module_database_url)["acme"]
    server = ServerProcess(root / "data", root / "service.log", env=env)
    server.start(timeout=300)
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=600) as c:
            small = io.BytesIO()
            Image.linear_gradient("L").convert("RGB").save(small, "PNG")
            warm = execute(c, [upload(c, small.getvalue())])  # the model's first call
            assert warm.status_code == 200, warm.text
            yield Measured(server, c)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def png() -> bytes:
    return large_png()


def test_one_large_png_referenced_many_times_stays_within_budget(
    measured: Measured, png: bytes
) -> None:
    ref = upload(measured.client, png)
    r, memory = measured.run([ref] * REFS)
    assert r.status_code == 200, r.text
    vectors = np.array(r.json()["output"]["embeddings"])
    assert vectors.shape == (REFS, 1280)
    assert np.allclose(vectors, vectors[0])
    report: dict[str, Any] = {"refs": REFS, **memory}
    assert memory["peak_growth_mb"] < PEAK_GROWTH_LIMIT_MB, report
    # ...and what the run took, it gave back.
    assert memory["retained_mb"] < RETAINED_LIMIT_MB, report


def test_distinct_large_pngs_decode_one_at_a_time(measured: Measured, png: bytes) -> None:
    distinct = REFS // 2
    refs = [upload(measured.client, tagged(png, str(i))) for i in range(distinct)]
    r, memory = measured.run(refs + refs)
    assert r.status_code == 200, r.text
    assert len(r.json()["output"]["embeddings"]) == 2 * distinct
    report: dict[str, Any] = {"distinct": distinct, "refs": 2 * distinct, **memory}
    assert memory["peak_growth_mb"] < PEAK_GROWTH_LIMIT_MB, report
    assert memory["retained_mb"] < RETAINED_LIMIT_MB, report
