"""Reading the input of `vectorsvc ingest` into items, and cutting them into batches.

A JSONL, CSV or Parquet file of rows, or a folder of images and documents, becomes
`SourceItem`s; a row or file that cannot become an item (no id, no text, a bad metadata
key, a duplicate id, a file that cannot be read) is an `ItemFailure` with its reason, so
that it fails alone. `FieldMap` says which fields of a row are the id, the text and the
metadata (`--id-field`, `--text-field`, `--metadata-field`).
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
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from vectorsvc.client.ingest.documents import UnreadableDocument, document_type, read_document

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
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


@dataclass(frozen=True)
class FieldMap:
    """Which fields of a row make the item: `id_field` the id, the `text_fields` the text
    (joined with a blank line, empty ones left out), `metadata_fields` the metadata (None:
    every other field, and in JSONL the keys of a `metadata` object)."""

    id_field: str = "id"
    text_fields: tuple[str, ...] = ("text",)
    metadata_fields: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        named = [self.id_field, *self.text_fields, *(self.metadata_fields or ())]
        if not all(named) or not self.text_fields:
            raise IngestError("--id-field, --text-field and --metadata-field need a field name")
        bad = _bad_keys(dict.fromkeys(self.metadata_fields or ()))
        if bad:
            raise IngestError(
                f"--metadata-field {bad[0]!r} cannot be a metadata key (letters, digits, '_' "
                "and '-', at most 64 characters)"
            )

    @property
    def mapped(self) -> set[str]:
        return {self.id_field, *self.text_fields}

    def flags(self) -> str:
        return " ".join(
            [f"--id-field {self.id_field}"] + [f"--text-field {f}" for f in self.text_fields]
        )

    def check_columns(self, path: Path, columns: list[str]) -> None:
        """A CSV header or a Parquet schema must have every field named."""
        wanted = [self.id_field, *self.text_fields, *(self.metadata_fields or ())]
        missing = [c for c in dict.fromkeys(wanted) if c not in columns]
        if missing:
            raise IngestError(
                f"{path}: no column {' or '.join(map(repr, missing))} (the columns are "
                f"{', '.join(map(repr, columns))}); name the id with --id-field, the text with "
                "--text-field (repeatable) and the metadata with --metadata-field (repeatable)"
            )
        if self.metadata_fields is None:
            bad = _bad_keys({c: None for c in columns if c not in self.mapped})
            if bad:
                raise IngestError(
                    f"{path}: column {bad[0]!r} cannot be a metadata key (letters, digits, '_' "
                    "and '-', at most 64 characters); rename it or choose the metadata columns "
                    "with --metadata-field"
                )


def _json_value(value: Any) -> Any:
    # Parquet cells may be dates, times or decimals: metadata is JSON.
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _row_item(
    where: str, row: dict[str, Any], fields: FieldMap, *, nested_metadata: bool = False
) -> SourceItem | ItemFailure:
    """One row (a JSON object, a CSV or Parquet row) as an item, by `fields`."""
    raw_id = row.get(fields.id_field)
    if raw_id is None or raw_id == "":
        keys = ", ".join(map(repr, list(row)[:8]))
        return ItemFailure(
            where,
            None,
            f"missing {fields.id_field!r} (the row has {keys or 'no fields'}; name the id "
            "field with --id-field and the text fields with --text-field)",
        )
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return ItemFailure(where, None, f"{fields.id_field!r} must be a string or an integer")
    item_id = str(raw_id)
    parts: list[str] = []
    for name in fields.text_fields:
        value = row.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            return ItemFailure(where, item_id, f"{name!r} must be a string")
        if value.strip():
            parts.append(value)
    if not parts:
        named = " or ".join(map(repr, fields.text_fields))
        return ItemFailure(where, item_id, f"missing {named} (a non-empty string)")
    if fields.metadata_fields is not None:
        metadata = {
            k: _json_value(row[k]) for k in fields.metadata_fields if row.get(k) not in (None, "")
        }
    else:
        skip = fields.mapped | ({"metadata"} if nested_metadata else set())
        metadata = {k: _json_value(v) for k, v in row.items() if k not in skip}
        if nested_metadata:
            metadata.update(row.get("metadata") or {})
    bad = _bad_keys(metadata)
    if bad:
        return ItemFailure(
            where,
            item_id,
            f"metadata key {bad[0]!r} is not allowed (letters, digits, '_' and '-', "
            "at most 64 characters)",
        )
    return SourceItem(id=item_id, where=where, metadata=metadata, text="\n\n".join(parts))


def read_jsonl(path: Path, fields: FieldMap | None = None) -> Iterator[SourceItem | ItemFailure]:
    """One JSON object a line: `id`, `text`, and `metadata` (an object) and/or any other
    keys, which become metadata too (the `metadata` object wins on a clash); `fields`
    names other fields."""
    fields = fields or FieldMap()
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
            if fields.metadata_fields is None and not isinstance(nested, dict | None):
                yield ItemFailure(where, None, "'metadata' must be an object")
                continue
            yield _row_item(where, row, fields, nested_metadata=True)


_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+")


def _csv_value(value: str) -> Any:
    # Numbers become numbers so range filters work on them; "007" stays a string.
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def read_csv(path: Path, fields: FieldMap | None = None) -> Iterator[SourceItem | ItemFailure]:
    """A header row with `id` and `text` (or the columns `fields` names); every other
    column is metadata (empty cells are left out; integers and decimals become numbers)."""
    fields = fields or FieldMap()
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        fields.check_columns(path, list(reader.fieldnames or []))
        for number, row in enumerate(reader, start=1):
            values = {
                k: v if k in fields.mapped else _csv_value(v)
                for k, v in row.items()
                if k is not None and v not in (None, "")
            }
            yield _row_item(f"row {number}", values, fields)


def read_parquet(path: Path, fields: FieldMap | None = None) -> Iterator[SourceItem | ItemFailure]:
    """A Parquet file's rows, as a CSV's (pyarrow: `pip install 'vectorsvc[parquet]'`)."""
    fields = fields or FieldMap()
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise IngestError(
            f"{path}: reading Parquet needs pyarrow: pip install 'vectorsvc[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's own errors: not a Parquet file, a damaged footer
        raise IngestError(f"{path}: cannot read as Parquet: {exc}") from None
    with parquet:
        columns = list(parquet.schema_arrow.names)
        fields.check_columns(path, columns)
        wanted = None
        if fields.metadata_fields is not None:
            wanted = list(dict.fromkeys([*fields.mapped, *fields.metadata_fields]))
        number = 0
        for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
            for row in batch.to_pylist():
                number += 1
                values = {k: v for k, v in row.items() if v is not None}
                yield _row_item(f"row {number}", values, fields)


@dataclass(frozen=True)
class IgnoredFile:
    """A file of the folder that is neither an image nor a document the model takes."""

    where: str
    suffix: str


def read_folder(
    folder: Path, *, images: bool, documents: bool
) -> Iterator[SourceItem | ItemFailure | IgnoredFile]:
    """The files under `folder` (recursively, by name order, hidden ones left out): id =
    the path relative to the folder. Images (if `images`) carry metadata `filename` and, in
    a subfolder, `folder`; documents (if `documents`) their extracted text and metadata
    `path`, `title` and `type`; a document that cannot be read fails alone."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # .git, .DS_Store, macOS's ._name.pdf resource forks
        suffix = path.suffix.lower()
        if images and suffix in IMAGE_SUFFIXES:
            metadata: dict[str, Any] = {"filename": path.name}
            if "/" in rel:
                metadata["folder"] = rel.rsplit("/", 1)[0]
            yield SourceItem(id=rel, where=rel, metadata=metadata, path=path)
        elif documents and document_type(path) is not None:
            try:
                doc = read_document(path)
            except UnreadableDocument as exc:
                yield ItemFailure(rel, rel, str(exc))
                continue
            metadata = {"path": rel, "title": doc.title, "type": doc.type}
            yield SourceItem(id=rel, where=rel, metadata=metadata, text=doc.text, path=path)
        else:
            yield IgnoredFile(rel, suffix or "(no suffix)")


Reader = Callable[[], Iterator[SourceItem | ItemFailure | IgnoredFile]]


def input_format(path: Path) -> str:
    """`folder`, `jsonl`, `csv` or `parquet`; anything else is refused before any request."""
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise IngestError(f"{path}: no such file or folder")
    name = path.name.lower()
    for suffixes, kind in (
        (JSONL_SUFFIXES, "jsonl"),
        (CSV_SUFFIXES, "csv"),
        (PARQUET_SUFFIXES, "parquet"),
    ):
        if name.endswith(suffixes):
            return kind
    raise IngestError(
        f"{path}: give a folder (of documents or images), a .jsonl, a .csv (optionally .gz) "
        f"or a .parquet file, not {path.suffix or 'a file without a suffix'}"
    )


def read_source(
    path: Path,
    fields: FieldMap | None = None,
    modalities: Iterable[str] = ("text", "image"),
) -> tuple[str, Reader]:
    """What the input holds (`texts`, `documents`, `images` or `documents and images`) and
    a reader over it; in a folder, only what the model's `modalities` take is read."""
    fields = fields or FieldMap()
    fmt = input_format(path)
    if fmt == "folder":
        if fields != FieldMap():
            raise IngestError(
                "--id-field, --text-field and --metadata-field are for JSONL, CSV and Parquet "
                "files; a folder's items are its files"
            )
        accepts = set(modalities)
        images, documents = "image" in accepts, "text" in accepts
        kind = " and ".join(k for k, on in (("documents", documents), ("images", images)) if on)
        return kind or "nothing", lambda: read_folder(path, images=images, documents=documents)
    readers = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet}
    return "texts", lambda: readers[fmt](path, fields)


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
