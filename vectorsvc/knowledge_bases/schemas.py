"""Knowledge Bases API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class MigrationPublic(BaseModel):
    """A model's new release being filled in the background; reads stay on `release`."""

    to_release: str
    done: int = Field(description="Points of the model re-embedded so far (all scopes).")
    total: int = Field(description="Points of the model to re-embed (all scopes).")
    started_at: datetime | None


class KnowledgeBasePublic(BaseModel):
    model: str
    model_name: str
    collection: str
    scope: str
    modality: str
    point_count: int = Field(description="Items stored (a long text counts once).")
    last_write_at: datetime
    approx_bytes: int
    release: str | None = Field(description="The model release searches read.")
    migration: MigrationPublic | None = Field(
        default=None, description="Present while a new release of the model is being filled."
    )


class KnowledgeBasesPublic(BaseModel):
    data: list[KnowledgeBasePublic]
    count: int = Field(description="How many knowledge bases match the filters in total.")
    next_cursor: str | None


class ItemPublic(BaseModel):
    id: str
    text_snippet: str | None
    media_ref: str | None
    thumbnail_url: str | None
    metadata: dict[str, Any]
    indexed_at: str | None
    chunks: int = Field(default=1, description="How many chunks the item's text is stored as.")
    text: str | None = Field(
        default=None, description="The item's whole text (reading one item only)."
    )


class ItemsPublic(BaseModel):
    data: list[ItemPublic]
    next_cursor: str | None


class DeleteByFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: dict[str, Any] = Field(description="Metadata filter, as in search params.filter.")
    dry_run: bool = False


class DeleteResult(BaseModel):
    dry_run: bool
    count: int = Field(description="Items removed, or that would be removed on a dry run.")
    deleted: int = Field(description="Items removed (0 on a dry run).")
