"""The resume state of `vectorsvc ingest`: media refs by file SHA-256, acknowledged batches.

One JSON file per input path, gateway, API key, model and scope (`default_state_path`),
written atomically, so that a re-run neither uploads a file again nor re-sends a batch the
server acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from vectorsvc.client.ingest.options import IngestOptions

STATE_VERSION = 1
# How often the state file is rewritten while uploading (every acknowledged batch is
# written at once).
STATE_SAVE_INTERVAL_S = 1.0


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vectorsvc" / "ingest"


def key_fingerprint(api_key: str) -> str:
    # Media refs belong to the key's workspace; the state file keeps only this short hash.
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def state_identity(options: IngestOptions) -> dict[str, str]:
    return {
        "input": str(options.path.resolve()),
        "gateway": options.gateway_url.rstrip("/").removesuffix("/api"),
        "key": key_fingerprint(options.api_key),
        "model": options.model,
        "scope": options.scope,
    }


def default_state_path(options: IngestOptions) -> Path:
    """`$XDG_CACHE_HOME/vectorsvc/ingest/<input name>-<hash>.json` (default `~/.cache`): one
    file per input path, gateway, API key, model and scope; never beside the input, which
    may be read-only or shared."""
    identity = json.dumps(state_identity(options), sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", options.path.resolve().name)[:60] or "input"
    return _cache_dir() / f"{name}-{digest}.json"


class IngestState:
    """Media refs by file SHA-256 and acknowledged batch digests; thread-safe, saved
    atomically (write a temp file, then rename)."""

    def __init__(self, path: Path, identity: dict[str, str]) -> None:
        self.path = path
        self.identity = identity
        self.media: dict[str, str] = {}
        self.acked: dict[str, int] = {}  # batch digest -> items in it
        self._lock = threading.Lock()
        self._last_save = 0.0
        self._dirty = False

    @classmethod
    def load(cls, path: Path, identity: dict[str, str], *, resume: bool) -> IngestState:
        state = cls(path, identity)
        if not resume or not path.exists():
            return state
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return state  # unreadable: start over (the server's dedupe keeps that cheap)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return state
        old = data.get("identity") or {}
        same_workspace = all(old.get(k) == identity[k] for k in ("gateway", "key"))
        if same_workspace:  # media refs are valid for the whole workspace
            state.media = {str(k): str(v) for k, v in (data.get("media") or {}).items()}
        if old == identity:  # acknowledgements only for this input, model and scope
            state.acked = {str(k): int(v) for k, v in (data.get("acked_batches") or {}).items()}
        return state

    def media_ref(self, sha256: str) -> str | None:
        with self._lock:
            return self.media.get(sha256)

    def set_media(self, sha256: str, media_ref: str) -> None:
        with self._lock:
            self.media[sha256] = media_ref
            self._dirty = True
        self.save(force=False)

    def forget_media(self, sha256: str) -> None:
        with self._lock:
            self.media.pop(sha256, None)
            self._dirty = True

    def ack(self, digest: str, items: int) -> None:
        with self._lock:
            self.acked[digest] = items
            self._dirty = True
        self.save(force=True)

    def is_acked(self, digest: str) -> bool:
        with self._lock:
            return digest in self.acked

    def save(self, *, force: bool = True) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._dirty or (not force and now - self._last_save < STATE_SAVE_INTERVAL_S):
                return
            data = {
                "version": STATE_VERSION,
                "identity": self.identity,
                "updated_at": datetime.now(UTC).isoformat(),
                "media": self.media,
                "acked_batches": self.acked,
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)  # atomic: a kill mid-write leaves the old file
            self._last_save = now
            self._dirty = False
