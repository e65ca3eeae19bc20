"""The content-addressed blob store for media bytes, on local disk under `settings.media_dir`.

Layout:

    <media_dir>/blobs/ab/ab12...ef              one file per distinct sha256 (deduplicated)
    <media_dir>/incoming/<upload_id>            bytes received by a PUT, not yet completed
    <media_dir>/tmp/                            partial PUT bodies while they stream in

Every file appears by `os.replace` from a temp file on the same filesystem, so a reader
never sees a half-written blob. Thumbnails are not stored here: they are cached in memory,
per workspace (`vectorsvc.media.thumbnails`); files named `<sha256>.thumb<N>.jpg` beside a
blob are the shared cache of earlier versions, removed by the collector.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def blob_path(root: Path, sha256: str) -> Path:
    """Where the blob with digest `sha256` lives under the media directory `root`."""
    # Validated so that a stored digest can never address a path outside the store.
    if not _SHA256_HEX.match(sha256):
        raise ValueError(f"not a lowercase sha256 hex digest: {sha256!r}")
    return root / "blobs" / sha256[:2] / sha256


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.incoming_dir = root / "incoming"
        self.tmp_dir = root / "tmp"
        for directory in (self.blobs_dir, self.incoming_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.sweep_temp()

    def blob_path(self, sha256: str) -> Path:
        return blob_path(self.root, sha256)

    def incoming_path(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.incoming_dir / upload_id

    def new_temp_path(self) -> Path:
        return self.tmp_dir / f"part-{secrets.token_hex(12)}"

    def adopt(self, source: Path, sha256: str) -> Path:
        """Move `source` (whose digest is `sha256`) into the store; drop it if the blob exists.

        Idempotent: when `source` is already gone but the blob is stored (a retry after a
        crash between the move and the database commit), it returns the blob path.
        """
        target = self.blob_path(sha256)
        if target.is_file():
            source.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target

    def blob_size(self, sha256: str) -> int:
        try:
            return self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def remove_blob(self, sha256: str) -> int:
        """Delete the blob `sha256` and any thumbnails of earlier versions beside it; the
        bytes freed. The caller holds the blob's `media_blobs` row (see `MediaService`)."""
        path = self.blob_path(sha256)
        freed = 0
        for file in (path, *path.parent.glob(f"{sha256}.thumb*")):
            with contextlib.suppress(FileNotFoundError):
                size = file.stat().st_size
                file.unlink()
                freed += size
        return freed

    def blob_digests(self) -> Iterator[str]:
        """The digest of every blob file on disk."""
        for shard in self.blobs_dir.iterdir():
            if shard.is_dir():
                for file in shard.iterdir():
                    if _SHA256_HEX.match(file.name):
                        yield file.name

    def legacy_files(self) -> Iterator[Path]:
        """Files in the blob directories that are not blobs: the shared thumbnails of earlier
        versions (`<sha256>.thumb<N>.jpg`) and their temp files."""
        for shard in self.blobs_dir.iterdir():
            if shard.is_dir():
                for file in shard.iterdir():
                    if ".thumb" in file.name and file.is_file():
                        yield file

    def incoming_files(self) -> Iterator[tuple[str, float]]:
        """(upload id, modification time) of each received body waiting for completion."""
        for file in self.incoming_dir.iterdir():
            if _UPLOAD_ID.match(file.name):
                with contextlib.suppress(FileNotFoundError):
                    yield file.name, file.stat().st_mtime

    def sweep_temp(self, *, older_than_s: float = 24 * 3600) -> int:
        """Delete partial PUT bodies left by a crash; how many. Only old ones: another process
        sharing this directory may be streaming into a recent one."""
        cutoff = time.time() - older_than_s
        removed = 0
        for part in self.tmp_dir.glob("part-*"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        return removed
