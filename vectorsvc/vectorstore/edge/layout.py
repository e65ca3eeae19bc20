"""The on-disk layout of an Edge store root, and the files that describe it.

root/
  .lock                      exclusive flock: one process per root (see `locking`)
  aliases.json               {"alias": "collection"}, replaced atomically
  collections/<name>/
    spec.json                the CollectionSpec; written LAST, so it marks a finished
                             ensure_collection (a shard dir without it is an orphan)
    shard/                   the Edge shard directory
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from vectorsvc.vectorstore.base import CollectionSpec, VectorStoreError

# Names become directory names: keep them to a safe, Qdrant-compatible alphabet.
NAME_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
COLLECTIONS_DIR = "collections"
SPEC_FILE = "spec.json"
SHARD_DIR = "shard"
SEGMENTS_DIR = "segments"  # inside SHARD_DIR: what warm() reads (the WAL is left alone)
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
# Stored in spec.json `extra` when a collection is created; absent means float32.
DATATYPE_KEY = "vector_datatype"


def check_name(name: str, what: str = "collection") -> str:
    if not NAME_RULE.match(name):
        raise VectorStoreError(f"invalid {what} name {name!r}")
    return name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write temp file in the same directory, fsync, os.replace: readers (and a crash)
    see either the old or the new file, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    # Makes the rename itself durable.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spec_to_json(spec: CollectionSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dimension": spec.dimension,
        "tenant_key": spec.tenant_key,
        "keyword_fields": list(spec.keyword_fields),
        "float_fields": list(spec.float_fields),
        "extra": dict(spec.extra),
        "sparse": spec.sparse,
    }


def spec_from_json(data: dict[str, Any]) -> CollectionSpec:
    return CollectionSpec(
        name=str(data["name"]),
        dimension=int(data["dimension"]),
        tenant_key=str(data["tenant_key"]),
        keyword_fields=tuple(data.get("keyword_fields", ())),
        float_fields=tuple(data.get("float_fields", ())),
        extra=dict(data.get("extra", {})),
        sparse=bool(data.get("sparse", False)),  # absent: a collection made before them
    )


def merge_specs(old: CollectionSpec, new: CollectionSpec) -> CollectionSpec:
    """Indexes are only ever added, so the persisted spec is the union of both. The
    vectors a shard holds are fixed at creation: `sparse` stays what it was."""
    return CollectionSpec(
        name=old.name,
        dimension=old.dimension,
        tenant_key=new.tenant_key,
        keyword_fields=tuple(dict.fromkeys(old.keyword_fields + new.keyword_fields)),
        float_fields=tuple(dict.fromkeys(old.float_fields + new.float_fields)),
        extra={**old.extra, **new.extra},
        sparse=old.sparse,
    )


def load_specs(collections_dir: Path) -> dict[str, CollectionSpec]:
    """Every finished collection under `collections_dir`, by name (one spec.json each)."""
    specs: dict[str, CollectionSpec] = {}
    for spec_path in sorted(collections_dir.glob(f"*/{SPEC_FILE}")):
        spec = spec_from_json(json.loads(spec_path.read_text(encoding="utf-8")))
        specs[spec.name] = spec
    return specs


def load_aliases(aliases_path: Path) -> dict[str, str]:
    if not aliases_path.exists():
        return {}
    data = json.loads(aliases_path.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}
