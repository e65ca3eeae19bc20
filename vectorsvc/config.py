"""Settings: one `BaseSettings`, environment variables prefixed `VECTORSVC_`."""

from __future__ import annotations

import ipaddress
import os
import re
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> `("bucket", "some/prefix/")`; `s3://bucket` -> prefix ""."""
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.scheme != "s3" or not _S3_BUCKET.match(bucket) or parts.query or parts.fragment:
        raise ValueError(
            "must be s3://BUCKET or s3://BUCKET/PREFIX (a bucket name of 3 to 63 lower-case "
            "letters, digits, dots and hyphens), or unset for <data_dir>/media"
        )
    if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
        raise ValueError("the prefix after the bucket must have no empty, . or .. segments")
    return bucket, f"{prefix}/" if prefix else ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VECTORSVC_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Vectors, metadata and media.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/vectorsvc.db"
    )
    qdrant_url: str | None = Field(
        default=None, description="Qdrant server URL; unset = embedded Qdrant Edge"
    )
    qdrant_api_key: str | None = None
    models_dir: Path | None = Field(
        default=None, description="Local model weights; default <data_dir>/models"
    )
    # The operator's model registry (same schema as the packaged
    # vectorsvc/model_registry/models.yaml, the default); checked at start-up.
    models_file: Path | None = Field(
        default=None, description="Model registry YAML; default the packaged models.yaml"
    )
    # Off by default: a service should not fetch gigabytes at request time. Turn on (or use
    # `vectorsvc models download SLUG`) where the model hub is reachable.
    allow_model_downloads: bool = False

    # Which models to load at start-up (comma separated slugs); others load on first use.
    preload_models: str = "all-minilm-l6-v2"
    create_dev_workspace: bool = True
    # Billing, in credits (exact decimals, at most 6 places): what the `dev` workspace
    # starts with, and what every other wallet opens with (0 in production: top up).
    dev_starting_credits: Decimal = Field(default=Decimal(1000), ge=0, decimal_places=6)
    default_workspace_credits: Decimal = Field(default=Decimal(0), ge=0, decimal_places=6)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Browser sessions: a short-lived access token, a longer refresh token that rotates.
    access_token_ttl_s: int = Field(default=15 * 60, ge=1, le=24 * 3600)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, ge=1, le=365 * 24 * 3600)

    # Limits
    max_items_per_run: int = Field(default=1000, ge=1)
    # Text chunks a synchronous index run may embed (long texts are several each).
    max_chunks_per_run: int = Field(default=4096, ge=1)
    max_items_per_background_run: int = Field(default=100_000, ge=1)
    background_chunk_size: int = Field(default=64, ge=1, le=4096)
    # Background items a workspace may have queued and not yet processed (more: 429).
    max_queued_items_per_workspace: int = Field(default=200_000, ge=1)
    # A text to index is split into chunks the model reads whole (`runs.chunking`); a
    # million characters fit in the default body limit unless mostly escaped in the JSON.
    max_text_chars: int = Field(default=1_000_000, ge=1)
    max_top_k: int = Field(default=100, ge=1, le=10_000)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Client metadata of an item: how deep it may nest (1: flat) and how many keys it may
    # hold in all, nested objects included. The store cannot read back a payload nested
    # past about 128 levels, hence the cap on the setting.
    max_metadata_depth: int = Field(default=8, ge=1, le=64)
    max_metadata_keys: int = Field(default=256, ge=1, le=10_000)
    embed_batch_size: int = Field(default=64, ge=1, le=4096)
    # How long a batch may wait for more concurrent requests (only in a lane that has lately
    # seen concurrent requests; a lone client never waits).
    batch_wait_ms: float = Field(default=1.0, ge=0, le=50)
    # Model calls side by side: worker threads per model and math threads per worker. 0 is
    # automatic: one worker with a math thread per CPU (`embedding.model_parallelism`).
    model_workers: int = Field(default=0, ge=0, le=64)
    model_threads: int = Field(default=0, ge=0, le=256)
    # Text models on sentence-transformers: "torch", or "onnx" (ONNX Runtime: same vectors,
    # faster on CPU; needs `pip install onnxruntime onnx`). See docs/performance.md.
    text_backend: Literal["torch", "onnx"] = "torch"
    # Run torch models' Linear layers through oneDNN on CPU (same vectors, cosine >= 0.99999;
    # faster than MKL on AMD CPUs: docs/performance.md). Checked at load; false keeps torch's.
    onednn: bool = True
    # Vector precision in the embedded store, for collections created from now on: float16
    # halves vector memory (docs/performance.md), cosine to float32 >= 0.99999.
    vector_datatype: Literal["float32", "float16"] = "float16"
    # A run's funds are reserved in the database before it starts (docs/architecture.md,
    # "Billing and funds"); a reservation its process did not settle within this long (the
    # process died) is given back by any process. Longer than any run takes.
    reservation_ttl_s: float = Field(default=900.0, ge=10, le=86_400)
    # A background run is worked on by the process that holds its lease, renewed while it
    # lives (PostgreSQL: several processes share the runs); a dead process's runs are taken
    # up by another once their lease lapses (docs/deployment.md, "Replicas").
    background_lease_s: float = Field(default=60.0, ge=3, le=3600)
    # How long a verified API key is remembered in memory: `vectorsvc keys revoke` (another
    # process) takes effect within this. 0 checks the database on every request.
    api_key_cache_s: float = Field(default=5.0, ge=0, le=3600)
    # Read the embedded store's files into the page cache at start-up, and again every
    # warm_store_interval_s while serving (0: at start-up only), so that searches do not wait
    # on the disk (Edge holds the GIL through a page fault; costs in docs/performance.md).
    # Hosts that page out idle file pages (these machines do after a minute) would
    # otherwise drop them again.
    warm_store: bool = True
    warm_store_interval_s: float = Field(default=30.0, ge=0)
    # At most this much is read each time (0: half of the machine's memory), so that a store
    # larger than memory does not push itself out of the cache every pass.
    warm_store_max_mb: int = Field(default=0, ge=0)

    @property
    def warm_store_max_bytes(self) -> int:
        if self.warm_store_max_mb:
            return self.warm_store_max_mb * 1024 * 1024
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2

    # Threads in each embedded-store collection's search pool (0: Qdrant Edge's default, one
    # per CPU). A search reads one scope's few points: handing it to a pool costs more than
    # the pool saves (measured: docs/performance.md, "What the design is"). Raise it
    # where single scopes hold hundreds of thousands of points and cores are plenty.
    edge_search_threads: int = Field(default=1, ge=0, le=256)
    # Per-credential token bucket (0 disables): sustained requests per minute, and burst.
    rate_limit_per_minute: int = Field(default=1200, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # Floods (docs/deployment.md, "Floods"). Client addresses: the peer, or the address in
    # X-Forwarded-For where the peer is one of these proxies (comma-separated IPs or CIDRs;
    # empty: trust none, so X-Forwarded-For cannot be spoofed).
    trusted_proxies: str = ""
    # Requests without valid credentials (401) per client address: a token bucket (0
    # disables); past it they answer 429. Valid credentials are never refused by it.
    auth_failures_per_minute: int = Field(default=60, ge=0)
    auth_failures_burst: int = Field(default=30, ge=1)
    # Sign-in and refresh attempts per client address (and refreshes per user).
    sign_in_per_minute: int = Field(default=30, ge=0)
    sign_in_burst: int = Field(default=20, ge=1)
    # Failed sign-ins for one email from one address, and from all addresses, after which
    # that email's sign-ins are refused (from there, or from everywhere) for
    # sign_in_lockout_s (0 disables a level).
    sign_in_lockout_failures: int = Field(default=5, ge=0)
    sign_in_account_lockout_failures: int = Field(default=20, ge=0)
    sign_in_lockout_s: float = Field(default=60.0, gt=0, le=3600)
    # Password hashes (argon2) running at once (0: half the CPUs, 1 to 4), and how many
    # more may wait; a sign-in beyond that answers 429 sign_in_busy at once.
    password_hash_workers: int = Field(default=0, ge=0, le=64)
    password_hash_queue: int = Field(default=8, ge=0, le=1024)
    # Keys each of these limiters remembers (least recently used forgotten first).
    auth_limiter_max_keys: int = Field(default=100_000, ge=1)

    # /metrics answers loopback clients; others must send this token as X-Metrics-Token.
    metrics_token: str | None = None

    # Media uploads: the byte limit holds at init and while the PUT body streams in; the
    # pixel limit refuses decompression bombs before any image is decoded.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    upload_ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    # Media storage per workspace (stored media plus uploads still open count, so parallel
    # inits cannot overshoot), and how often expired uploads and unreferenced blobs are
    # collected (0: never while serving; `vectorsvc media gc` does it on demand).
    media_quota_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    media_quota_count: int = Field(default=10_000, ge=1)
    media_gc_interval_s: float = Field(default=3600.0, ge=0)
    # Rendered thumbnails kept in memory, per workspace, least recently used out first.
    thumbnail_cache_mb: int = Field(default=64, ge=0, le=65536)
    # Where media bytes live: unset, <data_dir>/media on this machine; s3://bucket/prefix,
    # an S3 bucket every replica shares (credentials and region: the standard AWS_*
    # variables; docs/deployment.md). The endpoint points at an S3-compatible server (MinIO).
    media_url: str | None = None
    media_s3_endpoint_url: str | None = None

    # Deployment (see docs/deployment.md, "Safe deployment defaults"). Production creates no
    # `dev` workspace, so no API key is ever printed; the image sets it.
    env: Literal["development", "production"] = "development"
    # The service's address as clients reach it (behind a proxy: the proxy's), e.g.
    # https://vectors.example.com or https://example.com/vectorsvc. Upload URLs are built on
    # it; unset, they are built from each request's Host header and scheme.
    public_base_url: str | None = None

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must have no spaces or control characters")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host, e.g. https://vectors.example.com"
            )
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError("must have no query (?) or fragment (#)")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must carry no user name or password")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _production_has_no_dev_workspace(self) -> Settings:
        if self.env != "production":
            return self
        if self.create_dev_workspace and "create_dev_workspace" in self.model_fields_set:
            raise ValueError(
                "VECTORSVC_CREATE_DEV_WORKSPACE=true is refused with VECTORSVC_ENV=production "
                "(it would print an API key into the log); create workspaces and keys with "
                "`vectorsvc workspace create` and `vectorsvc keys create`"
            )
        self.create_dev_workspace = False
        return self

    def production_warnings(self) -> list[str]:
        """Settings that production tolerates but an operator should look at (logged at start)."""
        if self.env != "production":
            return []
        warnings: list[str] = []
        if self.public_base_url is None:
            warnings.append(
                "VECTORSVC_PUBLIC_BASE_URL is unset: upload URLs are built from each request's "
                "Host header and scheme; set it to the address clients reach the service at"
            )
        if self.qdrant_url and not self.qdrant_api_key:
            warnings.append(
                "VECTORSVC_QDRANT_URL is set without VECTORSVC_QDRANT_API_KEY: anyone who "
                "reaches that Qdrant reads and deletes every workspace's points"
            )
        return warnings

    # Images for the models are decoded one batch at a time, made smaller while decoding, and
    # one decode serves every reference to the same bytes. A synchronous run may decode at most
    # this many pixels (distinct images, counted at full resolution); at most this many
    # decodes run at once in the process, each holding one full-resolution image.
    max_decoded_pixels_per_run: int = Field(default=1_000_000_000, ge=1)
    image_decode_concurrency: int = Field(default=2, ge=1, le=64)

    @field_validator("media_url")
    @classmethod
    def _media_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        split_s3_url(value)
        return value

    @field_validator("media_s3_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            # Not echoed: the message must not carry what looks like a credential.
            raise ValueError(
                "must carry no user name or password; give credentials in AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host, e.g. http://minio:9000"
            )
        return value.rstrip("/")

    @field_validator("qdrant_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("http://", "https://")):
            raise ValueError("VECTORSVC_QDRANT_URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"VECTORSVC_TRUSTED_PROXIES: {entry!r} is not an IP address or network "
                    "(expected e.g. 10.0.0.5,172.16.0.0/12)"
                ) from None
        return value

    @model_validator(mode="after")
    def _api_key_needs_tls(self) -> Settings:
        # Refuse to send a Qdrant API key in clear text to a non-local host.
        url = self.qdrant_url
        if self.qdrant_api_key and url and url.startswith("http://"):
            host = url.removeprefix("http://").split("/")[0].split(":")[0]
            if host not in ("localhost", "127.0.0.1", "qdrant", "::1"):
                raise ValueError(
                    "VECTORSVC_QDRANT_API_KEY over plain http to a remote host is unsafe; "
                    "use an https:// VECTORSVC_QDRANT_URL"
                )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'vectorsvc.db').resolve()}"

    @cached_property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def vectors_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [e.strip() for e in self.trusted_proxies.split(",") if e.strip()]

    @property
    def preload_model_slugs(self) -> list[str]:
        return [s.strip() for s in self.preload_models.split(",") if s.strip()]
