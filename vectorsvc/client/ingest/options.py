"""What `vectorsvc ingest` is asked to do (`IngestOptions`) and what came of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vectorsvc.client.ingest.sources import FieldMap, ItemFailure


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
    fields: FieldMap = field(default_factory=FieldMap)


@dataclass
class IngestSummary:
    source: str
    model: str
    scope: str
    state_path: Path
    kind: str = ""  # "texts", "documents", "images" or "documents and images"
    total: int = 0  # items in the input, good or bad
    ignored: dict[str, int] = field(default_factory=dict)  # a folder's other files by suffix
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
