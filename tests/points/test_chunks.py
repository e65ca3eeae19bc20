"""An item's text rebuilt from its stored chunk payloads."""

from __future__ import annotations

from typing import Any

from vectorsvc.model_registry.registry import ModelRegistry
from vectorsvc.points.chunks import Chunk, assemble_text, read_chunk

TEXT = "First paragraph here.\n\nSecond one, longer than the first.\n\nThird."
SPANS = [(0, 30), (20, 55), (50, len(TEXT))]  # overlapping, covering


def payloads(spans: list[tuple[int, int]] = SPANS) -> list[dict[str, Any]]:
    model = ModelRegistry.from_file().get("all-minilm-l6-v2")
    out = []
    for n, (start, end) in enumerate(spans):
        fields = Chunk(n, len(spans), start, end).payload_fields(TEXT[start:end], model)
        out.append({"id": "doc", "text": TEXT[start:end], **fields})
    return out


def test_chunks_in_any_order_rebuild_the_text_exactly() -> None:
    assert assemble_text(payloads()) == TEXT
    assert assemble_text(list(reversed(payloads()))) == TEXT


def test_a_missing_or_inconsistent_chunk_is_no_text() -> None:
    parts = payloads()
    assert assemble_text(parts[:2]) is None  # chunk 2 missing
    assert assemble_text([parts[0], parts[2]]) is None
    gap = payloads([(0, 20), (30, len(TEXT))])
    assert assemble_text(gap) is None  # a span leaves a gap
    bad = payloads()
    bad[1]["text"] = "changed"
    assert assemble_text(bad) is None


def test_a_point_written_before_chunking_is_one_whole_chunk() -> None:
    legacy = {"id": "doc", "text": TEXT}
    assert assemble_text([legacy]) == TEXT
    chunk = read_chunk(legacy)
    assert (chunk.number, chunk.count, chunk.start, chunk.end) == (0, 1, 0, len(TEXT))
    odd = read_chunk({"id": "doc", "text": 5, "_chunk": "x", "_chunks": -2, "_start": True})
    assert (odd.number, odd.count, odd.start, odd.text) == (0, 1, 0, None)
    assert assemble_text([{"id": "img", "media_ref": "media_1"}]) is None
