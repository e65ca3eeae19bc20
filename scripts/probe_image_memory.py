"""Peak memory of an image run: one large PNG referenced many times in one execute run.

Starts `vectorsvc serve` on a loopback port, uploads one SIDE x SIDE PNG (mostly flat
colour, so a few hundred KB; with --distinct N, N copies of other bytes), loads the image
model with a small image, then sends one `image-similarity` execute run of REFS references
to the large images (with --concurrent C, C such runs at once, each starting at the next
distinct image). Memory is read
from /proc/<pid>/status of the service: VmRSS before the run, the peak (VmHWM, reset with
/proc/<pid>/clear_refs just before the run), and VmRSS a few seconds after it.

    PYTHONPATH=$PWD .venv/bin/python scripts/probe_image_memory.py --refs 40
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, service, write_results  # noqa: E402

MODEL = "image-similarity"


def large_png(side: int) -> bytes:
    """A side x side RGB PNG of flat shapes: small on the wire, side*side*3 bytes decoded."""
    image = Image.new("RGB", (side, side), (200, 220, 240))
    draw = ImageDraw.Draw(image)
    s = side / 7000
    draw.rectangle((1000 * s, 1500 * s, 4000 * s, 5000 * s), fill=(180, 40, 30))
    draw.ellipse((3500 * s, 800 * s, 6500 * s, 3800 * s), fill=(30, 120, 60))
    draw.polygon([(500 * s, 6500 * s), (3500 * s, 4200 * s), (6800 * s, 6800 * s)], fill="gold")
    for i in range(0, side, max(1, side // 20)):
        draw.line((i, 0, side - i, side), fill=(20, 20, 80), width=max(1, side // 280))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def tagged(png: bytes, tag: str) -> bytes:
    """`png` with a text chunk before IEND: the same pixels, other bytes (a distinct image)."""
    data = b"tag\x00" + tag.encode()
    crc = struct.pack(">I", zlib.crc32(b"tEXt" + data))
    end = png.rindex(b"IEND") - 4
    return png[:end] + struct.pack(">I", len(data)) + b"tEXt" + data + crc + png[end:]


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def upload(client: httpx.Client, data: bytes) -> str:
    r = client.post(
        "/api/media/upload/init",
        json={
            "filename": "probe.png",
            "content_type": "image/png",
            "media_type": "image",
            "size_bytes": len(data),
        },
    )
    r.raise_for_status()
    ticket = r.json()
    httpx.put(ticket["upload_url"], content=data, timeout=120).raise_for_status()
    r = client.post("/api/media/upload/complete", json={"upload_id": ticket["upload_id"]})
    r.raise_for_status()
    return str(r.json()["media_ref"])


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux 4.0+).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def execute(client: httpx.Client, refs: list[str]) -> httpx.Response:
    return client.post(
        "/api/runs",
        json={
            "model": MODEL,
            "mode": "execute",
            "input": {"images": [{"media_ref": ref} for ref in refs]},
        },
    )


def probe(
    refs: int, distinct: int, concurrent: int, side: int, settle_s: float, env: dict[str, str]
) -> dict[str, Any]:
    data = large_png(side)
    with service({"VECTORSVC_PRELOAD_MODELS": MODEL, **env}) as running, running.client() as c:
        pid = running.process.pid
        bigs = [upload(c, tagged(data, str(i)) if i else data) for i in range(distinct)]
        warm = execute(c, [upload(c, small_png())])
        warm.raise_for_status()
        time.sleep(1.0)
        before = status_kb(pid, "VmRSS")
        reset_peak(pid)
        sampled = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                sampled.append(status_kb(pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        runs = [[bigs[(k * refs + i) % distinct] for i in range(refs)] for k in range(concurrent)]
        with ThreadPoolExecutor(concurrent) as pool:
            responses = list(pool.map(lambda sent: execute(c, sent), runs))
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        peak = max(status_kb(pid, "VmHWM"), *sampled)
        time.sleep(settle_s)
        after = status_kb(pid, "VmRSS")
        errors = [r.json().get("error") for r in responses if r.status_code != 200]
    return {
        "refs": refs,
        "distinct": distinct,
        "concurrent": concurrent,
        "side": side,
        "png_bytes": len(data),
        "status": sorted({r.status_code for r in responses}),
        "error": errors[0] if errors else None,
        "seconds": round(seconds, 2),
        "rss_before_mb": before // 1024,
        "peak_mb": peak // 1024,
        "peak_growth_mb": (peak - before) // 1024,
        "rss_after_mb": after // 1024,
        "retained_mb": (after - before) // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=40)
    parser.add_argument("--distinct", type=int, default=1, help="distinct images, cycled")
    parser.add_argument("--concurrent", type=int, default=1, help="runs sent at once")
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait before RSS after")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument("--out", type=Path, default=Path("bench/results/image_memory.json"))
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    result = probe(args.refs, args.distinct, args.concurrent, args.side, args.settle_s, env)
    print_table(
        f"{MODEL} execute x {args.concurrent}, {args.distinct} {args.side}x{args.side} PNG, "
        f"{args.refs} refs each",
        [(key, str(value)) for key, value in result.items()],
    )
    write_results(args.out, result)


if __name__ == "__main__":
    main()
