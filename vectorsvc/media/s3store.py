"""The media store on S3 or an S3-compatible server (MinIO, ...), under s3://bucket/prefix.

Same layout as the local store (`storage`), so every replica sees every blob:

- A PUT body is streamed to a local temp file and checked there (size, sha256, content);
  `put_incoming` then sends it to `incoming/<upload_id>`, read from disk (never whole in
  memory): one PUT carrying the SHA-256 we computed, which the server verifies against the
  bytes it received, or above `MULTIPART_THRESHOLD` a multipart upload with a SHA-256 per
  part. The digest also rides along as object metadata.
- `adopt` (complete) checks the received object's size and recorded digest against the
  upload's row, then copies it server-side to `blobs/ab/<sha256>`: S3 makes an object
  visible whole or not at all, so no reader sees a half-written blob.
- Reads download the blob into a spooled temp file (memory up to `SPOOL_MEMORY_BYTES`).

Credentials, region and the rest come from the standard AWS chain (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION, instance roles);
`VECTORSVC_MEDIA_S3_ENDPOINT_URL` points at an S3-compatible server. No credential ever
appears in a message or a log line: errors name the store and the server's error code, and
the SDK's own debug logging (which prints request headers) is capped at INFO.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from vectorsvc.errors import ServiceError
from vectorsvc.media.storage import (
    SHA256_HEX,
    TEMP_MAX_AGE_S,
    UPLOAD_ID,
    MediaStoreUnavailable,
    blob_name,
    incoming_name,
    new_temp_path,
    sweep_temp_dir,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

logger = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 8 * 1024 * 1024
SPOOL_MEMORY_BYTES = 4 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_DELETE_BATCH = 1000  # the most keys one DeleteObjects takes

_DENIED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AllAccessDisabled",
        "403",
    }
)
_NO_BUCKET = frozenset({"NoSuchBucket", "404"})

for _name in ("botocore", "boto3", "s3transfer"):
    # Their DEBUG records print signed request headers (the access key id, a session token):
    # never below INFO, whatever level the root logger is given later.
    if logging.getLogger(_name).level < logging.INFO:
        logging.getLogger(_name).setLevel(logging.INFO)


def _client(endpoint_url: str | None) -> S3Client:
    config = Config(
        # S3-compatible servers (MinIO) expect bucket names in the path.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )
    client: S3Client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=config
    )
    return client


def _error_code(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:  # S3UploadFailedError wraps the ClientError
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code") or "unknown")
        seen = seen.__cause__ or seen.__context__
    return None


class S3MediaStore:
    """The `MediaStore` in `bucket` under `prefix` ("" or ending in "/"); PUT bodies and
    reads spill to `tmp_dir` on local disk."""

    def __init__(
        self, *, bucket: str, prefix: str, endpoint_url: str | None, tmp_dir: Path
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.client = _client(endpoint_url)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )
        sweep_temp_dir(tmp_dir, older_than_s=TEMP_MAX_AGE_S)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _where(self) -> str:
        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.location}{at}"

    def _reason(self, exc: BaseException) -> str:
        """What went wrong, in words an operator can act on; never a credential."""
        code = _error_code(exc)
        if code in _DENIED:
            return (
                f"access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE) and that they may "
                "list, read, write and delete objects in the bucket"
            )
        if code in _NO_BUCKET:
            return f"bucket {self.bucket!r} does not exist ({code}); create it first"
        if code is not None:
            return f"the server answered {code}"
        if isinstance(exc, NoCredentialsError):
            return (
                "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE, or run with an instance role)"
            )
        if isinstance(exc, EndpointConnectionError):
            return "cannot connect to the server (VECTORSVC_MEDIA_S3_ENDPOINT_URL, AWS_REGION)"
        return f"{type(exc).__name__}"

    def check(self) -> None:
        """Raise `MediaStoreUnavailable` naming the store and the reason unless the bucket
        can be listed with our credentials (start-up: fail fast, not at the first upload)."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise MediaStoreUnavailable(
                f"the media store {self._where()} (VECTORSVC_MEDIA_URL) is unusable: "
                f"{self._reason(exc)}",
                field="media_url",
            ) from None

    @contextlib.contextmanager
    def _calls(self, action: str) -> Iterator[None]:
        """S3 failures as `503 media_store_unavailable`: the detail is logged for the
        operator; the client learns only that storage is down, not where it is."""
        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            reason = self._reason(exc)
            logger.warning("media store %s: %s failed: %s", self._where(), action, reason)
            raise MediaStoreUnavailable(
                f"media storage is unavailable, could not {action}; retry later"
            ) from None

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def _list(self, name_prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(name_prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield dict(item)

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )

    def new_temp_path(self) -> Path:
        return new_temp_path(self.tmp_dir)

    def put_incoming(self, upload_id: str, source: Path, *, sha256: str) -> None:
        key = self._key(incoming_name(upload_id))
        with self._calls("store the upload"):
            if source.stat().st_size <= MULTIPART_THRESHOLD:
                with source.open("rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        Metadata={"sha256": sha256},
                        # The server refuses the PUT unless the bytes it got have this digest.
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                    )
            else:
                self.client.upload_file(
                    str(source),
                    self.bucket,
                    key,
                    ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"},
                    Config=self.transfer,
                )
        source.unlink(missing_ok=True)

    def adopt(self, upload_id: str, sha256: str, size_bytes: int) -> None:
        source, target = self._key(incoming_name(upload_id)), self._key(blob_name(sha256))
        with self._calls("store the media"):
            if self._head(target) is not None:
                self.client.delete_object(Bucket=self.bucket, Key=source)
                return
            head = self._head(source)
            if head is None:
                raise ServiceError(
                    f"upload {upload_id!r} lost its received bytes; start a new upload",
                    field="upload_id",
                    code="upload_bytes_missing",
                )
            recorded = head.get("Metadata", {}).get("sha256")
            if head.get("ContentLength") != size_bytes or recorded != sha256:
                # Changed behind our back since the PUT checked them: never make it a blob.
                raise ServiceError(
                    f"the received bytes of upload {upload_id!r} are not those its PUT "
                    "checked; start a new upload",
                    field="upload_id",
                    code="upload_bytes_mismatch",
                )
            # Server-side and atomic: the blob appears whole. Copied as it was sent: one
            # request for a single-PUT body, a multipart copy for a multipart one (whose
            # per-part checksums a single copy would carry over wrongly on some servers).
            copy_source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": source}
            if size_bytes <= MULTIPART_THRESHOLD:
                self.client.copy_object(CopySource=copy_source, Bucket=self.bucket, Key=target)
            else:
                self.client.copy(copy_source, self.bucket, target, Config=self.transfer)
            self.client.delete_object(Bucket=self.bucket, Key=source)

    @contextlib.contextmanager
    def open_blob(self, sha256: str) -> Iterator[IO[bytes]]:
        key = self._key(blob_name(sha256))
        with tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES, dir=str(self.tmp_dir)) as spool:
            with self._calls("read the media"):
                try:
                    # One GET, streamed: no HEAD first, no transfer threads for a small blob.
                    body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                    shutil.copyfileobj(body, spool, _READ_CHUNK)
                except ClientError as exc:
                    if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                        raise FileNotFoundError(sha256) from None
                    raise
            spool.seek(0)
            yield spool

    def blob_size(self, sha256: str) -> int:
        with self._calls("read the media"):
            head = self._head(self._key(blob_name(sha256)))
        return int(head["ContentLength"]) if head else 0

    def remove_blob(self, sha256: str) -> int:
        with self._calls("delete the media"):
            # The blob and any `<sha256>.thumb<N>.jpg` of earlier versions beside it.
            found = list(self._list(blob_name(sha256)))
            self._delete_keys([item["Key"] for item in found])
        return sum(int(item["Size"]) for item in found)

    def blob_digests(self) -> Iterator[str]:
        with self._calls("list the media"):
            for item in self._list("blobs/"):
                name = item["Key"].rsplit("/", 1)[-1]
                if SHA256_HEX.match(name):
                    yield name

    def remove_legacy_files(self) -> int:
        with self._calls("list the media"):
            legacy = [item["Key"] for item in self._list("blobs/") if ".thumb" in item["Key"]]
            self._delete_keys(legacy)
        return len(legacy)

    def incoming_files(self) -> Iterator[tuple[str, float]]:
        with self._calls("list the uploads"):
            for item in self._list("incoming/"):
                upload_id = item["Key"].rsplit("/", 1)[-1]
                if UPLOAD_ID.match(upload_id):
                    yield upload_id, item["LastModified"].timestamp()

    def remove_incoming(self, upload_id: str) -> None:
        with self._calls("delete an upload"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(incoming_name(upload_id)))

    def sweep_temp(self, *, older_than_s: float = TEMP_MAX_AGE_S) -> int:
        """Partial bodies on local disk, and multipart uploads a crash left open (their parts
        are stored, and billed, until aborted)."""
        removed = sweep_temp_dir(self.tmp_dir, older_than_s=older_than_s)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        with self._calls("list the uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key("incoming/")
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        return removed
