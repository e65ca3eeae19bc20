"""Bulk ingestion through the public API: a folder of images, or a JSONL / CSV of texts.

What `vectorsvc ingest` does, in order:

1. read the input into items (`id`, text or image file, metadata); rows that cannot become
   an item (no id, no text, a bad metadata key, a duplicate id) fail locally, with reasons;
2. images only: hash each file and upload the ones whose SHA-256 has no media_ref in the
   state file yet (`--concurrency` at a time);
3. cut the items into batches (at most `--batch-size` items and ~8 MB of JSON each), drop
   the batches that the state file says the server already acknowledged, and send the rest
   as index runs, `--concurrency` at a time (optionally as background runs, polled).

Resume: the state file (see `default_state_path`) records media refs by file SHA-256 and the
digests of acknowledged batches. It is written after every acknowledged batch, at most
every second while uploading, and on the way out of Ctrl-C or an error, so a re-run of the
same command neither uploads a file again nor re-sends an acknowledged batch. A batch whose
digest changed (an edited row) is re-sent whole; the server skips its unchanged items.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vectorsvc.client import (
    IndexCounts,
    RunItemError,
    RunStatus,
    VectorsvcClient,
    VectorsvcError,
    sniff_content_type,
)
from vectorsvc.client.schemas import SUCCEEDED

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
# The request body limit is 10 MB; leave room for the envelope and JSON escaping slack.
MAX_BATCH_BYTES = 8 * 1024 * 1024
# The server's rule for metadata keys (the models' contracts): checked here so one bad row
# fails alone instead of failing its whole batch.
METADATA_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
STATE_VERSION = 1
# How often the state file is rewritten while uploading (every acknowledged batch is
# written at once).
STATE_SAVE_INTERVAL_S = 1.0
# Where an index error points at one item: `input.items[12].text` -> 12.
_ITEM_FIELD = re.compile(r"^input\.items\[(\d+)\]")

# Called in the main thread after each acknowledged batch: a seam for tests (raise
# KeyboardInterrupt to act out a Ctrl-C) and for programs that embed the ingester.
after_batch_hooks: list[Callable[[BatchReport], None]] = []


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


@dataclass
class BatchReport:
    """What came of one batch: the server's counts and the items that failed."""

    batch: Batch
    counts: IndexCounts
    failures: list[ItemFailure]
    run_id: str | None
    acknowledged: bool


@dataclass
class IngestOptions:
    path: Path
    model: str
    scope: str
    gateway_url: str
    api_key: str
    concurrency: int = 4
    batch_size: int = 100
    background: bool = False
    state_file: Path | None = None
    resume: bool = True
    progress: bool = True
    timeout: float = 300.0
    retries: int = 5
    poll_interval: float = 1.0


@dataclass
class IngestSummary:
    source: str
    model: str
    scope: str
    state_path: Path
    kind: str = ""  # "texts" or "images"
    total: int = 0  # items in the input, good or bad
    items_sent: int = 0
    indexed: int = 0
    created: int = 0
    updated: int = 0
    skipped_server: int = 0  # unchanged: the server did not embed them again
    skipped_resumed: int = 0  # in batches a previous run got acknowledged: not sent
    batches_sent: int = 0
    batches_resumed: int = 0
    uploaded: int = 0
    uploads_reused: int = 0
    retries: int = 0
    failures: list[ItemFailure] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    fatal: str | None = None

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def items_per_s(self) -> float:
        return self.items_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not (self.failures or self.interrupted or self.fatal)


# -- resume state ---------------------------------------------------------------------------


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vectorsvc" / "ingest"


def key_fingerprint(api_key: str) -> str:
    # Media refs belong to the key's workspace; the state file keeps only this short hash.
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def state_identity(options: IngestOptions) -> dict[str, str]:
    return {
        "input": str(options.path.resolve()),
        "gateway": options.gateway_url.rstrip("/").removesuffix("/api"),
        "key": key_fingerprint(options.api_key),
        "model": options.model,
        "scope": options.scope,
    }


def default_state_path(options: IngestOptions) -> Path:
    """`$XDG_CACHE_HOME/vectorsvc/ingest/<input name>-<hash>.json` (default `~/.cache`): one
    file per input path, gateway, API key, model and scope; never beside the input, which
    may be read-only or shared."""
    identity = json.dumps(state_identity(options), sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", options.path.resolve().name)[:60] or "input"
    return _cache_dir() / f"{name}-{digest}.json"


class IngestState:
    """Media refs by file SHA-256 and acknowledged batch digests; thread-safe, saved
    atomically (write a temp file, then rename)."""

    def __init__(self, path: Path, identity: dict[str, str]) -> None:
        self.path = path
        self.identity = identity
        self.media: dict[str, str] = {}
        self.acked: dict[str, int] = {}  # batch digest -> items in it
        self._lock = threading.Lock()
        self._last_save = 0.0
        self._dirty = False

    @classmethod
    def load(cls, path: Path, identity: dict[str, str], *, resume: bool) -> IngestState:
        state = cls(path, identity)
        if not resume or not path.exists():
            return state
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return state  # unreadable: start over (the server's dedupe keeps that cheap)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return state
        old = data.get("identity") or {}
        same_workspace = all(old.get(k) == identity[k] for k in ("gateway", "key"))
        if same_workspace:  # media refs are valid for the whole workspace
            state.media = {str(k): str(v) for k, v in (data.get("media") or {}).items()}
        if old == identity:  # acknowledgements only for this input, model and scope
            state.acked = {str(k): int(v) for k, v in (data.get("acked_batches") or {}).items()}
        return state

    def media_ref(self, sha256: str) -> str | None:
        with self._lock:
            return self.media.get(sha256)

    def set_media(self, sha256: str, media_ref: str) -> None:
        with self._lock:
            self.media[sha256] = media_ref
            self._dirty = True
        self.save(force=False)

    def forget_media(self, sha256: str) -> None:
        with self._lock:
            self.media.pop(sha256, None)
            self._dirty = True

    def ack(self, digest: str, items: int) -> None:
        with self._lock:
            self.acked[digest] = items
            self._dirty = True
        self.save(force=True)

    def is_acked(self, digest: str) -> bool:
        with self._lock:
            return digest in self.acked

    def save(self, *, force: bool = True) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._dirty or (not force and now - self._last_save < STATE_SAVE_INTERVAL_S):
                return
            data = {
                "version": STATE_VERSION,
                "identity": self.identity,
                "updated_at": datetime.now(UTC).isoformat(),
                "media": self.media,
                "acked_batches": self.acked,
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)  # atomic: a kill mid-write leaves the old file
            self._last_save = now
            self._dirty = False


# -- reading the input ----------------------------------------------------------------------


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


# -- the run --------------------------------------------------------------------------------


class _Fatal(Exception):
    """An error that is no one item's fault (auth, credits, model, outage): stop."""

    def __init__(self, error: VectorsvcError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_item_error(exc: VectorsvcError) -> bool:
    # 4xx about the request's content; not auth (401/403), credits (402) or rate (429).
    return 400 <= exc.status < 500 and exc.status not in (401, 402, 403, 429)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} items/s" if speed else "- items/s", style="progress.data.speed")


T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pool(Generic[T, R]):
    """Run `fn` over `work` with at most `limit` in flight, handing each result to `done`
    in the calling thread. On any exception (Ctrl-C included) the in-flight work finishes
    and is handed over first, so nothing the server acknowledged goes unrecorded."""

    executor: ThreadPoolExecutor
    limit: int
    on_drain: Callable[[int], None] | None = None  # told how many are still in flight

    def run(self, work: Iterable[T], fn: Callable[[T], R], done: Callable[[T, R], None]) -> None:
        pending: dict[Future[R], T] = {}
        source = iter(work)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.limit:
                    unit = next(source, None)
                    if unit is None:
                        exhausted = True
                    else:
                        pending[self.executor.submit(fn, unit)] = unit
                if not pending:
                    return
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(pending.pop(future), future.result())
        except BaseException:
            if pending and self.on_drain is not None:
                self.on_drain(len(pending))
            self._drain(pending, done)
            raise

    @staticmethod
    def _drain(pending: dict[Future[R], T], done: Callable[[T, R], None]) -> None:
        try:
            for future, unit in list(pending.items()):
                try:
                    result = future.result()
                except Exception:  # the first error is the one reported
                    continue
                try:
                    done(unit, result)
                except Exception:
                    continue
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting; the state file has what finished


class Ingester:
    def __init__(
        self,
        options: IngestOptions,
        *,
        client: VectorsvcClient | None = None,
        console: Console | None = None,
    ) -> None:
        if options.concurrency < 1 or options.batch_size < 1:
            raise IngestError("--concurrency and --batch-size must be at least 1")
        self.options = options
        self.console = console or Console(stderr=True)
        self.client = client or VectorsvcClient(
            options.gateway_url,
            options.api_key,
            timeout=options.timeout,
            retries=options.retries,
            max_connections=max(10, options.concurrency * 2),
        )
        self._own_client = client is None
        self.state_path = options.state_file or default_state_path(options)
        self.summary = IngestSummary(
            source=str(options.path),
            model=options.model,
            scope=options.scope,
            state_path=self.state_path,
        )
        self._lock = threading.Lock()

    # -- per-unit work (worker threads) ------------------------------------------------------

    def _prepare_image(self, item: SourceItem) -> SourceItem | ItemFailure:
        """Hash the file; upload it unless the state file knows its media_ref."""
        assert item.path is not None
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            return ItemFailure(item.where, item.id, f"cannot read: {exc}")
        item.sha256 = hashlib.sha256(data).hexdigest()
        known = self.state.media_ref(item.sha256)
        if known is not None:
            item.media_ref = known
            with self._lock:
                self.summary.uploads_reused += 1
            return item
        return self._upload(item, data)

    def _upload(self, item: SourceItem, data: bytes | None = None) -> SourceItem | ItemFailure:
        assert item.path is not None
        try:
            data = item.path.read_bytes() if data is None else data
            uploaded = self.client.upload(
                data,
                filename=item.path.name,
                content_type=sniff_content_type(data, item.path.name),
                media_type="image",
            )
        except OSError as exc:
            return ItemFailure(item.where, item.id, f"cannot read: {exc}")
        except VectorsvcError as exc:
            if _is_item_error(exc):
                return ItemFailure(item.where, item.id, f"upload refused: {exc}")
            raise _Fatal(exc) from exc
        item.sha256 = uploaded.sha256
        item.media_ref = uploaded.media_ref
        self.state.set_media(uploaded.sha256, uploaded.media_ref)
        with self._lock:
            self.summary.uploaded += 1
        return item

    def _send(self, items: list[SourceItem]) -> tuple[IndexCounts, str | None, list[RunItemError]]:
        """One index run; counts, run id, and the run's per-item errors (background)."""
        payload = [item.payload() for item in items]
        if not self.options.background:
            result = self.client.index(self.options.model, self.options.scope, payload)
            return result.counts, result.run_id, []
        started = self.client.start_background_index(
            self.options.model, self.options.scope, payload
        )
        status: RunStatus = (
            started
            if started.finished
            else self.client.wait_run(started.id, poll_interval=self.options.poll_interval)
        )
        if status.status != SUCCEEDED:
            # Failed or cancelled as a whole (say, out of funds): not one item's fault.
            why = f"{status.error.code}: {status.error.message}" if status.error else "no reason"
            raise _Fatal(
                VectorsvcError(
                    0, f"run_{status.status}", f"background run {status.id} {status.status}: {why}"
                )
            )
        output = status.output or {}
        if "counts" in output:
            counts = IndexCounts.model_validate(output["counts"])
        else:  # background runs report progress: done = embedded and stored
            counts = IndexCounts(
                received=status.progress.total,
                indexed=status.progress.done,
                skipped=status.progress.skipped,
            )
        return counts, status.id, list(status.errors)

    def _index_batch(self, batch: Batch) -> BatchReport:
        items = list(batch.items)
        failures: list[ItemFailure] = []
        reuploaded: set[str] = set()
        while items:
            try:
                counts, run_id, run_errors = self._send(items)
            except VectorsvcError as exc:
                match = _ITEM_FIELD.match(exc.field or "")
                n = int(match.group(1)) if match else -1
                if not _is_item_error(exc) or not 0 <= n < len(items):
                    raise _Fatal(exc) from exc
                item = items[n]
                if exc.code == "media_not_found" and item.path and item.id not in reuploaded:
                    # A stale state file (the server lost the media): upload again, once.
                    reuploaded.add(item.id)
                    if item.sha256:
                        self.state.forget_media(item.sha256)
                    again = self._upload(item)
                    if isinstance(again, ItemFailure):
                        failures.append(again)
                        del items[n]
                    continue
                # One bad item: report it, send the others again.
                failures.append(ItemFailure(item.where, item.id, str(exc)))
                del items[n]
                continue
            for error in run_errors:
                if error.index is not None and 0 <= error.index < len(items):
                    item = items[error.index]
                    failures.append(
                        ItemFailure(item.where, item.id, f"{error.code}: {error.message}")
                    )
                else:
                    failures.append(ItemFailure(error.id or "?", error.id, error.message))
            return BatchReport(batch, counts, failures, run_id, acknowledged=not run_errors)
        return BatchReport(batch, IndexCounts(), failures, None, acknowledged=True)

    # -- orchestration (main thread) -----------------------------------------------------------

    def run(self) -> IngestSummary:
        started = time.monotonic()
        kind, reader = read_source(self.options.path)
        self.summary.kind = kind
        self.state = IngestState.load(
            self.state_path, state_identity(self.options), resume=self.options.resume
        )
        retries_before = self.client.retry_count
        interactive = self.console.is_terminal
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.options.progress,
            redirect_stdout=interactive,
            redirect_stderr=interactive,
        )
        executor = ThreadPoolExecutor(
            max_workers=self.options.concurrency, thread_name_prefix="ingest"
        )
        pool: _Pool[Any, Any] = _Pool(
            executor,
            self.options.concurrency,
            on_drain=lambda n: self.console.print(
                f"stopping: waiting for {n} request(s) in flight (Ctrl-C again to stop waiting)"
            ),
        )
        try:
            with progress:
                try:
                    items = self._collect(reader)
                except UnicodeDecodeError as exc:
                    raise IngestError(f"{self.options.path}: not UTF-8 text ({exc})") from None
                if kind == "images":
                    items = self._prepare_images(pool, progress, items)
                self._index(pool, progress, items)
        except KeyboardInterrupt:
            self.summary.interrupted = True
        except _Fatal as exc:
            self.summary.fatal = str(exc.error)
        finally:
            # After a Ctrl-C the in-flight work was already waited for (unless a second
            # Ctrl-C cut that short: then do not block on it again).
            executor.shutdown(wait=not self.summary.interrupted, cancel_futures=True)
            self.state.save(force=True)
            self.summary.retries = self.client.retry_count - retries_before
            self.summary.elapsed_s = time.monotonic() - started
            if self._own_client:
                self.client.close()
        return self.summary

    def _collect(
        self, reader: Callable[[], Iterator[SourceItem | ItemFailure]]
    ) -> list[SourceItem]:
        items: list[SourceItem] = []
        first_seen: dict[str, str] = {}
        for entry in reader():
            self.summary.total += 1
            if isinstance(entry, ItemFailure):
                self.summary.failures.append(entry)
            elif entry.id in first_seen:
                self.summary.failures.append(
                    ItemFailure(
                        entry.where, entry.id, f"duplicate id (first at {first_seen[entry.id]})"
                    )
                )
            else:
                first_seen[entry.id] = entry.where
                items.append(entry)
        return items

    def _prepare_images(
        self,
        pool: _Pool[SourceItem, SourceItem | ItemFailure],
        progress: Progress,
        items: list[SourceItem],
    ) -> list[SourceItem]:
        task = progress.add_task("uploading", total=len(items))
        ready: list[SourceItem] = []

        def done(_: SourceItem, result: SourceItem | ItemFailure) -> None:
            if isinstance(result, ItemFailure):
                self.summary.failures.append(result)
            else:
                ready.append(result)
            progress.advance(task)

        pool.run(items, self._prepare_image, done)
        self.state.save(force=True)
        order = {item.id: n for n, item in enumerate(items)}
        ready.sort(key=lambda item: order[item.id])  # the same batches whatever the timing
        return ready

    def _index(
        self, pool: _Pool[Batch, BatchReport], progress: Progress, items: list[SourceItem]
    ) -> None:
        batches = list(make_batches(items, self.options.batch_size))
        todo: list[Batch] = []
        for batch in batches:
            if self.state.is_acked(batch.digest):
                self.summary.batches_resumed += 1
                self.summary.skipped_resumed += len(batch.items)
            else:
                todo.append(batch)
        task: TaskID = progress.add_task(
            "indexing", total=len(items), completed=self.summary.skipped_resumed
        )

        def done(_: Batch, report: BatchReport) -> None:
            self._record(report)
            progress.advance(task, len(report.batch.items))
            if report.acknowledged:
                for hook in after_batch_hooks:
                    hook(report)

        pool.run(todo, self._index_batch, done)

    def _record(self, report: BatchReport) -> None:
        s = self.summary
        s.batches_sent += 1
        s.items_sent += len(report.batch.items)
        s.indexed += report.counts.indexed
        s.created += report.counts.created
        s.updated += report.counts.updated
        s.skipped_server += report.counts.skipped
        s.failures.extend(report.failures)
        if report.run_id:
            s.run_ids.append(report.run_id)
        if report.acknowledged:
            self.state.ack(report.batch.digest, len(report.batch.items))


def run_ingest(
    options: IngestOptions,
    *,
    client: VectorsvcClient | None = None,
    console: Console | None = None,
) -> IngestSummary:
    return Ingester(options, client=client, console=console).run()


def render_summary(summary: IngestSummary, console: Console, *, max_failures: int = 20) -> None:
    s = summary
    if s.interrupted:
        head = "[yellow]Interrupted[/]: re-run the same command to resume"
    elif s.fatal:
        head = f"[red]Stopped[/]: {s.fatal}"
    else:
        head = "[green]Done[/]" if not s.failures else "[yellow]Done, with failures[/]"
    console.print(head, highlight=False)
    rows: list[tuple[str, str]] = [
        ("input", f"{s.source} -> model {s.model}, scope {s.scope} ({s.total} items)"),
        ("indexed", f"{s.indexed} (created {s.created}, updated {s.updated})"),
        (
            "skipped",
            f"{s.skipped_server + s.skipped_resumed} (unchanged on the server "
            f"{s.skipped_server}, acknowledged in an earlier run {s.skipped_resumed})",
        ),
        ("failed", str(s.failed)),
        (
            "sent",
            f"{s.items_sent} items in {s.batches_sent} batches "
            f"({s.batches_resumed} batches resumed)",
        ),
    ]
    if s.kind == "images":
        rows.append(
            ("uploads", f"{s.uploaded} uploaded, {s.uploads_reused} reused from the state file")
        )
    rows += [
        ("retries", str(s.retries)),
        ("elapsed", f"{s.elapsed_s:.1f} s, {s.items_per_s:.1f} items/s"),
        ("state", str(s.state_path)),
    ]
    for label, value in rows:
        console.print(f"  {label:<8} {value}", highlight=False, markup=False, soft_wrap=True)
    if s.failures:
        console.print("failed items:", highlight=False)
        for failure in s.failures[:max_failures]:
            console.print(f"  {failure}", highlight=False, markup=False, soft_wrap=True)
        if len(s.failures) > max_failures:
            console.print(f"  ... and {len(s.failures) - max_failures} more", highlight=False)
