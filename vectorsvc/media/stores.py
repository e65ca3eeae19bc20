"""The configured media store: `<data_dir>/media` on local disk (the default), or S3 when
`VECTORSVC_MEDIA_URL` is `s3://bucket/prefix` (boto3 imported only then)."""

from __future__ import annotations

from vectorsvc.config import Settings, split_s3_url
from vectorsvc.media.storage import BlobStore, MediaStore


def open_media_store(settings: Settings) -> MediaStore:
    """The store `settings` name, checked: an S3 bucket that cannot be listed with our
    credentials raises `MediaStoreUnavailable` naming the store and the reason."""
    if settings.media_url is None:
        return BlobStore(settings.media_dir)
    from vectorsvc.media.s3store import S3MediaStore

    bucket, prefix = split_s3_url(settings.media_url)
    store = S3MediaStore(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=settings.media_s3_endpoint_url,
        tmp_dir=settings.media_dir / "tmp",
    )
    store.check()
    return store
