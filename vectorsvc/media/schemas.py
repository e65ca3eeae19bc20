"""Request and response models of the media API. Requests forbid unknown fields (422)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vectorsvc.media.content import MediaType, normalize_content_type


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UploadInit(_Request):
    filename: str = Field(min_length=1, max_length=255, examples=["image.png"])
    content_type: str = Field(min_length=1, max_length=255, examples=["image/png"])
    media_type: MediaType
    size_bytes: int = Field(ge=1, description="Exact size of the bytes that will be PUT.")

    @field_validator("filename")
    @classmethod
    def _base_name(cls, value: str) -> str:
        # Only a display name: keep the last path component and refuse control characters.
        name = value.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError("filename must be a file name without control characters")
        return name

    @field_validator("content_type")
    @classmethod
    def _normalize(cls, value: str) -> str:
        return normalize_content_type(value)


class UploadInitPublic(BaseModel):
    upload_id: str
    upload_url: str = Field(description="PUT the bytes here; the URL is its own credential.")
    expires_at: datetime
    max_bytes: int


class UploadReceivedPublic(BaseModel):
    upload_id: str
    size_bytes: int
    sha256: str


class UploadComplete(_Request):
    upload_id: str = Field(min_length=1, max_length=100, examples=["studio_upload_..."])


class UploadCompletePublic(BaseModel):
    media_ref: str
    sha256: str
    size_bytes: int
    content_type: str


class MediaPublic(BaseModel):
    media_ref: str
    media_type: MediaType
    content_type: str
    filename: str
    size_bytes: int
    sha256: str
    width: int | None
    height: int | None
    created_at: datetime


class MediaUsagePublic(BaseModel):
    """A workspace's media storage against its quota; open uploads count as their size."""

    used_bytes: int
    limit_bytes: int
    used_count: int
    limit_count: int
