"""Reading the input of `vectorsvc ingest` into items, and cutting them into batches.

A JSONL or CSV of texts, or a folder of images, becomes `SourceItem`s; a row that cannot
become an item (no id, no text, a bad metadata key, a duplicate id) is an `ItemFailure`
with its reason, so that it fails alone.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
# The request body limit is 10 MB; leave room for the envelope and JSON escaping slack.
MAX_BATCH_BYTES = 8 * 1024 * 1024
# The server's rule for metadata keys (the models' contracts): checked here so one bad row
# fails alone instead of failing its whole batch.
METADATA_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")


class IngestError(Exception):
    """A problem with the input or the options, found before anything is sent."""


@dataclass(frozen=True)
class ItemFailure:
    where: str  # "line 12", "row 3", "cats/tabby.png"
    id: str | None
    reason: str

    def __str__(self) -> str:
        ident = f" (id {self.id!r})" if self.id is not None and self.id != self.where else ""
        return f"{self.where}{ident}: {self.reason}"


@dataclass
class SourceItem:
    id: str
    where: str
    metadata: dict[str, Any]
    text: str | None = None
    path: Path | None = None
    sha256: str | None = None  # images, once hashed
    media_ref: str | None = None  # images, once uploaded (or found in the state file)

    def fingerprint(self) -> str:
        """What identifies this item's content, for batch digests: id, content, metadata."""
        content = self.text if self.text is not None else self.sha256
        blob = json.dumps([self.id, content, self.metadata], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.text is not None:
            out["text"] = self.text
        else:
            out["image"] = {"media_ref": self.media_ref}
        if self.metadata:
            out["metadata"] = self.metadata
        return out


@dataclass
class Batch:
    number: int
    items: list[SourceItem]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.fingerprint().encode())
        return h.hexdigest()[:32]


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="")


def _bad_keys(metadata: dict[str, Any]) -> list[str]:
    return [k for k in metadata if not METADATA_KEY.match(k)]


def _text_item(
    where: str, raw_id: Any, text: Any, metadata: dict[str, Any]
) -> SourceItem | ItemFailure:
    if raw_id is None or raw_id == "":
        return ItemFailure(where, None, "missing 'id'")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return ItemFailure(where, None, "'id' must be a string or an integer")
    item_id = str(raw_id)
    if not isinstance(text, str) or not text.strip():
        return ItemFailure(where, item_id, "missing 'text' (a non-empty string)")
    bad = _bad_keys(metadata)
    if bad:
        return ItemFailure(
            where,
            item_id,
            f"metadata key {bad[0]!r} is not allowed (letters, digits, '_' and '-', "
            "at most 64 characters)",
        )
    return SourceItem(id=item_id, where=where, metadata=metadata, text=text)


def read_jsonl(path: Path) -> Iterator[SourceItem | ItemFailure]:
    """One JSON object a line: `id`, `text`, and `metadata` (an object) and/or any other
    keys, which become metadata too (the `metadata` object wins on a clash)."""
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                yield ItemFailure(where, None, f"not JSON: {exc}")
                continue
            if not isinstance(row, dict):
                yield ItemFailure(where, None, "not a JSON object")
                continue
            nested = row.get("metadata")
            if nested is not None and not isinstance(nested, dict):
                yield ItemFailure(where, None, "'metadata' must be an object")
                continue
            metadata = {k: v for k, v in row.items() if k not in ("id", "text", "metadata")}
            metadata.update(nested or {})
            yield _text_item(where, row.get("id"), row.get("text"), metadata)


_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+")


def _csv_value(value: str) -> Any:
    # Numbers become numbers so range filters work on them; "007" stays a string.
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def read_csv(path: Path) -> Iterator[SourceItem | ItemFailure]:
    """A header row with `id` and `text`; every other column is metadata (empty cells are
    left out; integers and decimals become numbers)."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("id", "text") if c not in columns]
        if missing:
            raise IngestError(f"{path}: the CSV header has no {' or '.join(map(repr, missing))}")
        bad = _bad_keys({c: None for c in columns if c not in ("id", "text")})
        if bad:
            raise IngestError(
                f"{path}: column {bad[0]!r} cannot be a metadata key (letters, digits, '_' "
                "and '-', at most 64 characters); rename it"
            )
        for number, row in enumerate(reader, start=1):
            metadata = {
                k: _csv_value(v)
                for k, v in row.items()
                if k not in ("id", "text") and k is not None and v not in (None, "")
            }
            yield _text_item(f"row {number}", row.get("id"), row.get("text"), metadata)


def read_image_folder(folder: Path) -> Iterator[SourceItem | ItemFailure]:
    """Every image under `folder` (recursively, by name order): id = the path relative to
    the folder, metadata = `filename` and, in a subfolder, `folder`."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = path.relative_to(folder).as_posix()
        metadata: dict[str, Any] = {"filename": path.name}
        if "/" in rel:
            metadata["folder"] = rel.rsplit("/", 1)[0]
        yield SourceItem(id=rel, where=rel, metadata=metadata, path=path)


def read_source(path: Path) -> tuple[str, Callable[[], Iterator[SourceItem | ItemFailure]]]:
    """The kind of input (`images` or `texts`) and a reader over it."""
    if path.is_dir():
        return "images", lambda: read_image_folder(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file or folder")
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "texts", lambda: read_jsonl(path)
    if name.endswith(CSV_SUFFIXES):
        return "texts", lambda: read_csv(path)
    raise IngestError(
        f"{path}: give a folder of images, a .jsonl or a .csv file "
        f"(optionally .gz), not {path.suffix or 'a file without a suffix'}"
    )


def make_batches(items: Iterable[SourceItem], batch_size: int) -> Iterator[Batch]:
    """Consecutive items, at most `batch_size` and ~MAX_BATCH_BYTES of JSON a batch."""
    current: list[SourceItem] = []
    size = 0
    number = 0
    for item in items:
        # Image payloads are small; texts dominate the size.
        item_size = len(json.dumps(item.payload(), ensure_ascii=False).encode()) + 2
        if current and (len(current) >= batch_size or size + item_size > MAX_BATCH_BYTES):
            yield Batch(number, current)
            number += 1
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        yield Batch(number, current)
