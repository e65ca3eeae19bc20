"""What a test sees of the media store under test, local directory or S3 bucket, by the same
names: `blobs/ab/<sha256>`, `incoming/<upload_id>`, `tmp/part-...` (partial bodies are on
local disk with either store)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vectorsvc.config import Settings, split_s3_url


class StoreView:
    def __init__(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = settings.media_dir
        self.monkeypatch = monkeypatch
        self.bucket = self.prefix = ""
        self.s3: Any = None
        self.aged: dict[str, float] = {}
        if settings.media_url is not None:
            import boto3
            from botocore.config import Config

            self.bucket, self.prefix = split_s3_url(settings.media_url)
            self.s3 = boto3.client(
                "s3",
                endpoint_url=settings.media_s3_endpoint_url,
                config=Config(s3={"addressing_style": "path"}),
            )

    @property
    def is_s3(self) -> bool:
        return self.s3 is not None

    @staticmethod
    def blob(sha256: str) -> str:
        return f"blobs/{sha256[:2]}/{sha256}"

    def _local(self, name: str) -> bool:
        return not self.is_s3 or name.startswith("tmp/")

    def files(self) -> list[str]:
        """Every name the store holds (blobs, received bodies, partial bodies)."""
        local_root = self.root if not self.is_s3 else self.root / "tmp"
        names = [p.relative_to(self.root).as_posix() for p in local_root.rglob("*") if p.is_file()]
        if self.is_s3:
            names += [key.removeprefix(self.prefix) for key in self._keys()]
        return sorted(names)

    def _keys(self) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def read(self, name: str) -> bytes:
        if self._local(name):
            return (self.root / name).read_bytes()
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        return body

    def write(self, name: str, data: bytes) -> None:
        if self._local(name):
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def exists(self, name: str) -> bool:
        return name in self.files()

    def age(self, name: str, seconds: float) -> None:
        """Make `name` look `seconds` old. S3 cannot backdate an object: for a received
        body there, the store's listing of received bodies is shifted instead."""
        if self._local(name):
            then = time.time() - seconds
            os.utime(self.root / name, (then, then))
            return
        assert name.startswith("incoming/"), name
        from vectorsvc.media.s3store import S3MediaStore

        if not self.aged:
            listed = S3MediaStore.incoming_files

            def incoming_files(store: S3MediaStore) -> Iterator[tuple[str, float]]:
                for upload_id, mtime in listed(store):
                    yield upload_id, mtime - self.aged.get(upload_id, 0.0)

            self.monkeypatch.setattr(S3MediaStore, "incoming_files", incoming_files)
        self.aged[name.removeprefix("incoming/")] = seconds
