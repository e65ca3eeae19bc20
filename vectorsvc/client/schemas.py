"""Response shapes of the gateway API, as the client sees them.

Plain pydantic, no server imports, so that the client stays light (httpx + pydantic).
Every model ignores fields it does not know: a newer server may add fields without
breaking an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field

# Run statuses: `queued` and `running` are only seen on background runs.
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Highlight(_Model):
    """The item's best-matching chunk: its text and character span in the item's text."""

    text: str
    start: int
    end: int


class Hit(_Model):
    """One search result: one item, scored by its best chunk."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    media_ref: str | None = None
    thumbnail_url: str | None = None
    highlight: Highlight | None = None


class ModelDetail(_Model):
    """A published model's page (`GET /api/marketplace/models/{slug}`): what it takes."""

    slug: str
    modalities: list[str] = Field(default_factory=list)
    modes: list[str] = Field(default_factory=list)
    contracts: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def max_text_chars(self, mode: str = "index") -> int | None:
        """The longest item `text` the mode's contract allows, where it says (maxLength)."""
        node: Any = self.contracts.get(mode, {}).get("input_schema")
        for key in ("properties", "items", "items", "properties", "text", "maxLength"):
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, int) and not isinstance(node, bool) else None


class IndexCounts(_Model):
    received: int = 0
    indexed: int = 0
    created: int = 0
    updated: int = 0
    # Items whose content and metadata were already stored as sent: not embedded, not billed.
    skipped: int = 0


class IndexResult(_Model):
    """The output of a synchronous `index` run (plus the run's id)."""

    run_id: str | None = None
    ids: list[str] = Field(default_factory=list)
    counts: IndexCounts = Field(default_factory=IndexCounts)
    collection: str | None = None
    scope: str | None = None


class RunProgress(_Model):
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0


class RunItemError(_Model):
    """A per-item failure of a background run."""

    index: int | None = None
    id: str | None = None
    code: str = "error"
    message: str = ""


class RunStatus(_Model):
    """A run as `POST /api/runs` (background) and `GET /api/runs/{id}` describe it."""

    id: str
    status: str
    model: str | None = None
    mode: str | None = None
    scope: str | None = None
    progress: RunProgress = Field(default_factory=RunProgress)
    errors: list[RunItemError] = Field(default_factory=list)
    error: RunItemError | None = None  # why the whole run stopped, if it did
    timings: dict[str, Any] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class UploadTicket(_Model):
    """The answer of `POST /api/media/upload/init`."""

    upload_id: str
    upload_url: str
    expires_at: datetime
    max_bytes: int


class UploadedMedia(_Model):
    """The answer of `POST /api/media/upload/complete`."""

    media_ref: str
    sha256: str
    size_bytes: int
    content_type: str


class KnowledgeBase(_Model):
    model: str
    model_name: str = ""
    collection: str
    scope: str
    modality: str = ""
    point_count: int = 0
    last_write_at: datetime | None = None
    approx_bytes: int = 0


class Wallet(_Model):
    workspace_id: str
    balance: str = Field(description="Credits as an exact decimal string.")
    balance_micro_credits: int
    currency: str = "credits"
    updated_at: datetime | None = None


class TextItem(TypedDict):
    """A text to index: `id` (your id; indexing it again replaces it), `text`, `metadata`."""

    id: str
    text: str
    metadata: NotRequired[dict[str, Any]]


class MediaRef(TypedDict):
    media_ref: str


class ImageItem(TypedDict):
    """An uploaded image to index, by the `media_ref` that `upload_media` returns."""

    id: str
    image: MediaRef
    metadata: NotRequired[dict[str, Any]]
