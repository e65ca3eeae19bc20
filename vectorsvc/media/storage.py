"""Where media bytes live: the `MediaStore` interface, and its local-disk implementation.

Two stores hold the same layout, picked by `VECTORSVC_MEDIA_URL` (`stores.open_media_store`):
`BlobStore` under `<data_dir>/media` (the default) and `s3store.S3MediaStore` under
`s3://bucket/prefix`, where every replica sees every blob.

    blobs/ab/ab12...ef              one object per distinct sha256 (deduplicated)
    incoming/<upload_id>            bytes received by a PUT, not yet completed
    tmp/                            partial PUT bodies while they stream in (local disk)

A PUT body always streams to a local temp file first, where its size, digest and content
are checked; only then does `put_incoming` hand it to the store. A blob appears whole or
not at all (`os.replace` here, a single PUT or server-side copy in S3), so a reader never
sees a half-written one. Thumbnails are not stored: they are cached in memory, per
workspace (`vectorsvc.media.thumbnails`); files named `<sha256>.thumb<N>.jpg` beside a blob
are the shared cache of earlier versions, removed by the collector.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from vectorsvc.errors import ServiceError

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Partial PUT bodies older than this are left by a crash (another process sharing the
# directory may be streaming into a recent one).
TEMP_MAX_AGE_S = 24 * 3600


class MediaStoreUnavailable(ServiceError):
    """The media store cannot be reached or refuses our credentials. Its message names the
    store and the reason, never a credential."""

    code = "media_store_unavailable"
    status = 503


def blob_name(sha256: str) -> str:
    """The blob with digest `sha256`, relative to the store's root (`blobs/ab/ab12...`)."""
    # Validated so that a stored digest can never address a name outside the store.
    if not SHA256_HEX.match(sha256):
        raise ValueError(f"not a lowercase sha256 hex digest: {sha256!r}")
    return f"blobs/{sha256[:2]}/{sha256}"


def incoming_name(upload_id: str) -> str:
    if not UPLOAD_ID.match(upload_id):
        raise ValueError(f"not an upload id: {upload_id!r}")
    return f"incoming/{upload_id}"


def blob_path(root: Path, sha256: str) -> Path:
    """Where the blob with digest `sha256` lives under the media directory `root`."""
    return root / blob_name(sha256)


class MediaStore(Protocol):
    """What the upload flow, the readers and the collector need of a store. Blocking."""

    @property
    def location(self) -> str:
        """Where the store is, for messages (a directory, or s3://bucket/prefix)."""

    def new_temp_path(self) -> Path:
        """A fresh local file name for a PUT body streaming in."""

    def put_incoming(self, upload_id: str, source: Path, *, sha256: str) -> None:
        """Store the checked PUT body at `source` (consumed) as upload `upload_id`'s bytes."""

    def adopt(self, upload_id: str, sha256: str, size_bytes: int) -> None:
        """Make upload `upload_id`'s received bytes the blob `sha256`, or drop them if that
        blob exists. Idempotent: with the bytes already gone and the blob stored (a retry
        after a crash before the database commit) it does nothing."""

    def open_blob(self, sha256: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """The blob's bytes, seekable; `FileNotFoundError` if it is gone."""

    def blob_size(self, sha256: str) -> int:
        """The blob's size in bytes, 0 if it is gone."""

    def remove_blob(self, sha256: str) -> int:
        """Delete the blob and any thumbnails of earlier versions beside it; the bytes freed.
        The caller holds the blob's `media_blobs` row (see `collector`)."""

    def blob_digests(self) -> Iterator[str]:
        """The digest of every stored blob."""

    def remove_legacy_files(self) -> int:
        """Delete the shared thumbnails of earlier versions (`<sha256>.thumb<N>.jpg`) beside
        the blobs; how many."""

    def incoming_files(self) -> Iterator[tuple[str, float]]:
        """(upload id, modification time) of each received body waiting for completion."""

    def remove_incoming(self, upload_id: str) -> None:
        """Delete upload `upload_id`'s received bytes, if any."""

    def sweep_temp(self, *, older_than_s: float = TEMP_MAX_AGE_S) -> int:
        """Delete partial bodies left by a crash; how many."""


def sweep_temp_dir(tmp_dir: Path, *, older_than_s: float) -> int:
    """Delete the `part-*` files in `tmp_dir` older than `older_than_s`; how many."""
    cutoff = time.time() - older_than_s
    removed = 0
    for part in tmp_dir.glob("part-*"):
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_mtime < cutoff:
                part.unlink()
                removed += 1
    return removed


def new_temp_path(tmp_dir: Path) -> Path:
    return tmp_dir / f"part-{secrets.token_hex(12)}"


class BlobStore:
    """The media store on local disk, under `root` (`<data_dir>/media`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.incoming_dir = root / "incoming"
        self.tmp_dir = root / "tmp"
        for directory in (self.blobs_dir, self.incoming_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.sweep_temp()

    @property
    def location(self) -> str:
        return str(self.root)

    def blob_path(self, sha256: str) -> Path:
        return blob_path(self.root, sha256)

    def incoming_path(self, upload_id: str) -> Path:
        return self.root / incoming_name(upload_id)

    def new_temp_path(self) -> Path:
        return new_temp_path(self.tmp_dir)

    def put_incoming(self, upload_id: str, source: Path, *, sha256: str) -> None:
        os.replace(source, self.incoming_path(upload_id))

    def adopt(self, upload_id: str, sha256: str, size_bytes: int) -> None:
        source, target = self.incoming_path(upload_id), self.blob_path(sha256)
        if target.is_file():
            source.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    def open_blob(self, sha256: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self.blob_path(sha256).open("rb")

    def blob_size(self, sha256: str) -> int:
        try:
            return self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def remove_blob(self, sha256: str) -> int:
        path = self.blob_path(sha256)
        freed = 0
        for file in (path, *path.parent.glob(f"{sha256}.thumb*")):
            with contextlib.suppress(FileNotFoundError):
                size = file.stat().st_size
                file.unlink()
                freed += size
        return freed

    def blob_digests(self) -> Iterator[str]:
        for shard in self.blobs_dir.iterdir():
            if shard.is_dir():
                for file in shard.iterdir():
                    if SHA256_HEX.match(file.name):
                        yield file.name

    def remove_legacy_files(self) -> int:
        legacy = [
            file
            for shard in self.blobs_dir.iterdir()
            if shard.is_dir()
            for file in shard.iterdir()
            if ".thumb" in file.name and file.is_file()
        ]
        for file in legacy:
            file.unlink(missing_ok=True)
        return len(legacy)

    def incoming_files(self) -> Iterator[tuple[str, float]]:
        for file in self.incoming_dir.iterdir():
            if UPLOAD_ID.match(file.name):
                with contextlib.suppress(FileNotFoundError):
                    yield file.name, file.stat().st_mtime

    def remove_incoming(self, upload_id: str) -> None:
        self.incoming_path(upload_id).unlink(missing_ok=True)

    def sweep_temp(self, *, older_than_s: float = TEMP_MAX_AGE_S) -> int:
        return sweep_temp_dir(self.tmp_dir, older_than_s=older_than_s)
