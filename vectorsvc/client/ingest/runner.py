"""Bulk ingestion through the public API: a folder of documents and/or images, or a JSONL /
CSV / Parquet file of texts.

What `vectorsvc ingest` does, in order:

0. look the model up (`GET /api/marketplace/models/{slug}`): a folder is read for what the
   model takes (documents for text, images for image), and a text longer than the index
   contract's `maxLength`, where it publishes one, fails locally;
1. read the input into items (`id`, text or image file, metadata); rows or files that
   cannot become an item (no id, no text, a bad metadata key, a duplicate id, a document
   that cannot be read, a text over the limit) fail locally, with reasons;
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

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
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
    ModelDetail,
    RunItemError,
    RunStatus,
    VectorsvcClient,
    VectorsvcError,
    sniff_content_type,
)
from vectorsvc.client.ingest.options import IngestOptions, IngestSummary
from vectorsvc.client.ingest.sources import (
    MAX_BATCH_BYTES,
    Batch,
    IgnoredFile,
    IngestError,
    ItemFailure,
    SourceItem,
    input_format,
    make_batches,
    read_source,
)
from vectorsvc.client.ingest.state import IngestState, default_state_path, state_identity
from vectorsvc.client.schemas import SUCCEEDED

# Where an index error points at one item: `input.items[12].text` -> 12.
_ITEM_FIELD = re.compile(r"^input\.items\[(\d+)\]")

# Called in the main thread after each acknowledged batch: a seam for tests (raise
# KeyboardInterrupt to act out a Ctrl-C) and for programs that embed the ingester.
after_batch_hooks: list[Callable[[BatchReport], None]] = []


@dataclass
class BatchReport:
    """What came of one batch: the server's counts and the items that failed."""

    batch: Batch
    counts: IndexCounts
    failures: list[ItemFailure]
    run_id: str | None
    acknowledged: bool


class _Fatal(Exception):
    """An error that is no one item's fault (auth, credits, model, outage): stop."""

    def __init__(self, error: VectorsvcError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_item_error(exc: VectorsvcError) -> bool:
    # 4xx about the request's content; not auth (401/403), credits (402) or rate (429).
    return 400 <= exc.status < 500 and exc.status not in (401, 402, 403, 429)


def _item_reason(exc: VectorsvcError) -> str:
    """The server's refusal of one item, without the request's `input.items[12]...` path
    (the summary names the item by its file or line)."""
    message = exc.message
    if exc.field and message.startswith(f"{exc.field}: "):
        message = message[len(exc.field) + 2 :]
    leaf = (exc.field or "").rsplit(".", 1)[-1]
    what = f"{leaf}: " if leaf and not leaf.startswith("items[") else ""
    hint = ""
    if exc.code == "text_too_long":
        hint = " (the server's limit: split the text, or ask its operator to raise the limit)"
    return f"refused by the server ({exc.code}): {what}{message}{hint}"


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
        self.max_text_chars: int | None = None  # from the model's index contract, if there

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
                if exc.status == 413 and len(items) == 1:
                    n = 0  # one item alone is over the server's request size limit
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
                failures.append(ItemFailure(item.where, item.id, _item_reason(exc)))
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
        input_format(self.options.path)  # a wrong path or suffix fails before any request
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
            model = self._model()
            self.max_text_chars = model.max_text_chars()
            kind, reader = read_source(self.options.path, self.options.fields, model.modalities)
            self.summary.kind = kind
            with progress:
                try:
                    items = self._collect(reader, progress)
                except UnicodeDecodeError as exc:
                    raise IngestError(f"{self.options.path}: not UTF-8 text ({exc})") from None
                images = [item for item in items if item.text is None]
                if images:
                    ready = {item.id for item in self._prepare_images(pool, progress, images)}
                    items = [item for item in items if item.text is not None or item.id in ready]
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

    def _model(self) -> ModelDetail:
        try:
            return self.client.get_model(self.options.model)
        except VectorsvcError as exc:
            raise _Fatal(exc) from exc

    def _too_large(self, item: SourceItem) -> str | None:
        """Why a text cannot be sent as it is, known before sending it; else None."""
        if item.text is None:
            return None
        limit = self.max_text_chars
        if limit is not None and len(item.text) > limit:
            return (
                f"text has {len(item.text):,} characters; the index contract of "
                f"{self.options.model} allows at most {limit:,}"
            )
        if len(item.text) * 6 > MAX_BATCH_BYTES:  # worst case of JSON escaping: measure
            size = len(json.dumps(item.payload(), ensure_ascii=False).encode())
            if size > MAX_BATCH_BYTES:
                return (
                    f"too large for one request ({size / 1e6:.1f} MB as JSON; "
                    f"at most {MAX_BATCH_BYTES / 1e6:.1f} MB)"
                )
        return None

    def _collect(
        self,
        reader: Callable[[], Iterator[SourceItem | ItemFailure | IgnoredFile]],
        progress: Progress,
    ) -> list[SourceItem]:
        items: list[SourceItem] = []
        first_seen: dict[str, str] = {}
        task = progress.add_task("reading", total=None)
        for entry in reader():
            if isinstance(entry, IgnoredFile):
                self.summary.ignored[entry.suffix] = self.summary.ignored.get(entry.suffix, 0) + 1
                continue
            self.summary.total += 1
            progress.advance(task)
            too_large = None if isinstance(entry, ItemFailure) else self._too_large(entry)
            if isinstance(entry, ItemFailure):
                self.summary.failures.append(entry)
            elif too_large is not None:
                self.summary.failures.append(ItemFailure(entry.where, entry.id, too_large))
            elif entry.id in first_seen:
                self.summary.failures.append(
                    ItemFailure(
                        entry.where, entry.id, f"duplicate id (first at {first_seen[entry.id]})"
                    )
                )
            else:
                first_seen[entry.id] = entry.where
                items.append(entry)
        progress.update(task, total=self.summary.total)
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
    if s.ignored:
        by_suffix = ", ".join(f"{n} {suffix}" for suffix, n in sorted(s.ignored.items()))
        n = sum(s.ignored.values())
        files = "a file" if n == 1 else f"{n} files"
        rows.append(("ignored", f"{files} that {s.model} does not take ({by_suffix})"))
    if "images" in s.kind:
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
