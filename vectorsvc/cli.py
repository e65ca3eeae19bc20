"""The `vectorsvc` command: serve, and administer workspaces, API keys and wallets."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select

from vectorsvc.auth.keys import create_api_key, revoke_api_key
from vectorsvc.billing import service as billing
from vectorsvc.billing.money import format_credits, parse_credits
from vectorsvc.client.commands import add_client_commands
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import ApiKey, LedgerEntry, Workspace
from vectorsvc.embedding import EmbedderSettings
from vectorsvc.errors import ServiceError, ValidationFailed
from vectorsvc.model_registry.registry import ModelRegistry, RegistryError
from vectorsvc.observability import configure_logging
from vectorsvc.vectorstore.base import VectorStore
from vectorsvc.workspaces.service import DEV_WORKSPACE, create_workspace, get_workspace_by_name

logger = logging.getLogger(__name__)


def _at_most(column: Any) -> Callable[[str], str]:
    """An argparse type for free text kept in `column`: PostgreSQL refuses text longer than
    the column (SQLite would keep it), so it is refused here, naming the limit."""
    limit: int = column.type.length

    def check(value: str) -> str:
        if len(value) > limit:
            raise argparse.ArgumentTypeError(f"at most {limit} characters, got {len(value)}")
        return value

    return check


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:  # fail fast with the reason, not a traceback
        reasons = [
            (f"VECTORSVC_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        message = "invalid settings: " + "; ".join(reasons)
        raise ServiceError(message, code="invalid_settings") from None


def _registry(settings: Settings) -> ModelRegistry:
    """The configured model registry, checked; a broken one is an error, not a traceback."""
    try:
        return ModelRegistry.from_settings(settings)
    except RegistryError as exc:
        raise ServiceError(str(exc), code="invalid_model_registry") from None


def _media_store(settings: Settings) -> None:
    """Open the configured media store once: an S3 bucket that is unreachable or refuses the
    credentials is an error naming the store and the reason (`MediaStoreUnavailable`)."""
    from vectorsvc.media.stores import open_media_store

    open_media_store(settings)


def _database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db


def bootstrap_dev_workspace(settings: Settings, db: Database) -> str | None:
    """On first start (no workspace at all), create `dev` and return its new API key.
    Never in production: the settings turn `create_dev_workspace` off there."""
    if not settings.create_dev_workspace:
        return None
    with db.session() as session:
        if session.scalar(select(func.count()).select_from(Workspace)):
            return None
        workspace = create_workspace(session, name=DEV_WORKSPACE)
        billing.open_wallet(
            session,
            workspace_id=workspace.id,
            micro_credits=parse_credits(settings.dev_starting_credits),
            note="development workspace starting credits",
        )
        return create_api_key(session, workspace=workspace, label="dev").plaintext


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vectorsvc.app import create_app

    settings = _settings(args)
    configure_logging(settings.log_level)
    for warning in settings.production_warnings():
        logger.warning(warning)
    _registry(settings)  # fail fast on a broken registry, before anything starts
    _media_store(settings)  # and on a media bucket we cannot reach or may not use
    db = _database(settings)
    key = bootstrap_dev_workspace(settings, db)
    db.close()
    base = f"http://{settings.host}:{settings.port}"
    if key:
        print("Created the development workspace 'dev'. Its API key (shown only once):")
        print(f"  {key}")
        print("Try it:")
        print(
            f"  curl -s -X POST {base}/api/runs -H 'X-API-Key: {key}' "
            '-H \'Content-Type: application/json\' -d \'{"model": "all-minilm-l6-v2", '
            '"mode": "index", "scope": "playground", "input": {"items": [{"id": "doc-1", '
            '"text": "Qdrant is a vector database"}]}}\''
        )
        sys.stdout.flush()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # the observability middleware logs each request with its id
        # X-Forwarded-For is honoured only from VECTORSVC_TRUSTED_PROXIES (see create_app);
        # uvicorn's default would trust any loopback peer's.
        proxy_headers=False,
    )
    return 0


def cmd_workspace_create(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    with db.session() as session:
        workspace = create_workspace(session, name=args.name)
        print(f"created workspace {workspace.name} ({workspace.id})")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    with db.session() as session:
        workspace = get_workspace_by_name(session, name=args.workspace)
        issued = create_api_key(session, workspace=workspace, label=args.label)
    print(f"created API key {issued.key_id} for workspace {args.workspace}; it is shown only once:")
    print(issued.plaintext)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    db = _database(_settings(args))
    with db.session() as session:
        row = revoke_api_key(session, key_id=args.key_id)
        print(f"revoked API key {row.id}")
    return 0


def _read_new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ServiceError(
            "no terminal to prompt for a password: pipe it in and pass --password-stdin",
            code="password_required",
        )
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != password:
        raise ServiceError("the two passwords differ", code="password_mismatch")
    return password


def cmd_users_create(args: argparse.Namespace) -> int:
    # Imported here: only this command needs argon2 and the accounts service.
    from vectorsvc.accounts.service import create_user
    from vectorsvc.workspaces.service import find_workspace

    db = _database(_settings(args))
    with db.session() as session:
        workspace = find_workspace(session, name=args.workspace)
        if workspace is None:
            raise ServiceError(
                f"workspace {args.workspace!r} does not exist; create it first with "
                f"`vectorsvc workspace create {args.workspace}`"
            )
        user = create_user(
            session, email=args.email, password=_read_new_password(args), workspace=workspace
        )
        print(f"created user {user.email} ({user.id}) in workspace {workspace.name}")
    return 0


def cmd_wallet_topup(args: argparse.Namespace) -> int:
    try:
        micro_credits = parse_credits(args.credits)
    except ValueError as exc:
        raise ValidationFailed(f"--credits: {exc}", field="credits") from None
    settings = _settings(args)
    db = _database(settings)
    with db.session() as session:
        workspace = get_workspace_by_name(session, name=args.workspace)
        balance = billing.top_up(
            session,
            workspace_id=workspace.id,
            micro_credits=micro_credits,
            note=args.note or "top-up by CLI",
            opening_micro_credits=billing.opening_micro_credits(settings),
        )
    print(
        f"topped up workspace {args.workspace} by {format_credits(micro_credits)} credits; "
        f"balance: {format_credits(balance)} credits"
    )
    return 0


def cmd_store_optimize(args: argparse.Namespace) -> int:
    """Compact the embedded store's collections; the service must be stopped (it holds the
    store, and optimize() would stop every request while it runs)."""
    import time

    from vectorsvc.vectorstore import VectorStoreError
    from vectorsvc.vectorstore.edge import EdgeVectorStore

    settings = _settings(args)
    if settings.qdrant_url:
        raise ServiceError("a Qdrant server optimizes its own segments; this is for Qdrant Edge")
    try:
        store = EdgeVectorStore(settings.vectors_dir)
    except VectorStoreError as exc:
        raise ServiceError(f"{exc}: stop the service first", code="store_busy") from exc
    with store:
        for name in store.list_collections():
            started = time.perf_counter()
            changed = store.optimize(name)
            done = "compacted" if changed else "already compact"
            print(f"{name}: {done} in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_media_gc(args: argparse.Namespace) -> int:
    """Purge expired uploads and unreferenced blobs now (safe while the service runs)."""
    from vectorsvc.media.service import MediaService

    settings = _settings(args)
    db = _database(settings)
    try:
        report = MediaService.from_settings(settings, db).collect()
    finally:
        db.close()
    for name, value in vars(report).items():
        print(f"{name}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vectorsvc", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data directory (default: $VECTORSVC_DATA_DIR or ./data)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.set_defaults(func=cmd_serve)

    workspace = sub.add_parser("workspace", help="manage workspaces")
    workspace_sub = workspace.add_subparsers(dest="action", required=True)
    ws_create = workspace_sub.add_parser("create", parents=[common], help="create a workspace")
    ws_create.add_argument("name")
    ws_create.set_defaults(func=cmd_workspace_create)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    k_create = keys_sub.add_parser("create", parents=[common], help="create an API key")
    k_create.add_argument("--workspace", required=True)
    k_create.add_argument("--label", default="", type=_at_most(ApiKey.__table__.c.label))
    k_create.set_defaults(func=cmd_keys_create)
    k_revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke an API key")
    k_revoke.add_argument("key_id")
    k_revoke.set_defaults(func=cmd_keys_revoke)

    wallet = sub.add_parser("wallet", help="manage workspace wallets (credits)")
    wallet_sub = wallet.add_subparsers(dest="action", required=True)
    w_topup = wallet_sub.add_parser(
        "topup", parents=[common], help="add credits to a workspace's wallet"
    )
    w_topup.add_argument("--workspace", required=True)
    w_topup.add_argument("--credits", required=True, help="e.g. 100 or 12.5")
    w_topup.add_argument(
        "--note",
        default="",
        type=_at_most(LedgerEntry.__table__.c.note),
        help="recorded in the ledger",
    )
    w_topup.set_defaults(func=cmd_wallet_topup)

    store = sub.add_parser("store", help="maintain the embedded vector store (Qdrant Edge)")
    store_sub = store.add_subparsers(dest="action", required=True)
    s_optimize = store_sub.add_parser(
        "optimize",
        parents=[common],
        help="compact collections to on-disk segments (offline: stop the service first)",
    )
    s_optimize.set_defaults(func=cmd_store_optimize)

    media = sub.add_parser("media", help="maintain media storage")
    media_sub = media.add_subparsers(dest="action", required=True)
    md_gc = media_sub.add_parser(
        "gc",
        parents=[common],
        help="purge expired uploads and blobs no media uses (safe while the service runs)",
    )
    md_gc.set_defaults(func=cmd_media_gc)

    users = sub.add_parser("users", help="manage users who sign in to the web page")
    users_sub = users.add_subparsers(dest="action", required=True)
    u_create = users_sub.add_parser(
        "create", parents=[common], help="create a user in a workspace (prompts for a password)"
    )
    u_create.add_argument("--email", required=True)
    u_create.add_argument("--workspace", required=True, help="an existing workspace name")
    u_create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    u_create.set_defaults(func=cmd_users_create)

    models = sub.add_parser("models", help="published models and their weights")
    models_sub = models.add_subparsers(dest="action", required=True)
    m_list = models_sub.add_parser(
        "list", parents=[common], help="models and whether their weights are here"
    )
    m_list.set_defaults(func=cmd_models_list)
    m_download = models_sub.add_parser(
        "download",
        parents=[common],
        help="download a model's weights from the model hub into the models dir",
    )
    m_download.add_argument("slug")
    m_download.set_defaults(func=cmd_models_download)

    m_status = models_sub.add_parser(
        "status",
        parents=[common],
        help="each model's releases, their point counts and migration state",
    )
    m_status.set_defaults(func=cmd_models_status)
    m_rollback = models_sub.add_parser(
        "rollback",
        parents=[common],
        help="point a model's alias back at its previous release (stop the service first)",
    )
    m_rollback.add_argument("slug")
    m_rollback.set_defaults(func=cmd_models_rollback)
    m_prune = models_sub.add_parser(
        "prune",
        parents=[common],
        help="delete releases that are neither live nor the rollback target (stop the "
        "service first)",
    )
    m_prune.add_argument("slug")
    m_prune.add_argument("--all-old", action="store_true", help="delete the rollback target too")
    m_prune.set_defaults(func=cmd_models_prune)

    add_client_commands(sub)  # ingest, search: API clients, defined with the client
    return parser


def _embedder_settings(settings: Settings) -> EmbedderSettings:
    return EmbedderSettings.from_settings(settings)


def cmd_models_list(args: argparse.Namespace) -> int:
    from embedders.base import MissingDependency, WeightsUnavailable

    settings = _settings(args)
    checks = _embedder_settings(settings)
    for spec in _registry(settings).models:
        try:
            checks.check(spec)
            state = "available"
        except (WeightsUnavailable, MissingDependency) as exc:
            state = f"not available: {exc}"
        print(f"{spec.slug:<20} {', '.join(spec.modalities):<12} {spec.dimension:>5}-d  {state}")
    return 0


# Models whose weights come from the model hub rather than an installed package.
HUB_REPOS = {"clip-vit-b-32": "sentence-transformers/clip-ViT-B-32"}


def cmd_models_download(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _registry(settings).get(args.slug)
    repo = HUB_REPOS.get(args.slug)
    if repo is None:
        print(f"{args.slug}: its weights ship in an installed package; nothing to download")
        return 0
    from huggingface_hub import snapshot_download

    target = settings.resolved_models_dir / args.slug
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id=repo, local_dir=str(target))
    except Exception as exc:  # noqa: BLE001 - any hub/network failure is the user's answer
        print(f"error: could not download {repo}: {exc}", file=sys.stderr)
        return 2
    print(f"downloaded {repo} into {target}")
    return 0


def _open_store(settings: Settings, *, required: bool) -> VectorStore | None:
    """The configured store; None (or, when `required`, an error) while the running
    service holds the embedded one."""
    from vectorsvc.vectorstore import VectorStoreError, open_configured_store

    try:
        return open_configured_store(settings)
    except VectorStoreError as exc:
        if required:
            raise ServiceError(f"{exc}: stop the service first", code="store_busy") from exc
        return None


def cmd_models_status(args: argparse.Namespace) -> int:
    from vectorsvc.points import releases

    settings = _settings(args)
    db = _database(settings)
    store = _open_store(settings, required=False)
    try:
        for line in releases.status_lines(db, _registry(settings), store):
            print(line)
    finally:
        if store is not None:
            store.close()
        db.close()
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from vectorsvc.points import releases

    settings = _settings(args)
    db = _database(settings)
    store = _open_store(settings, required=True)
    assert store is not None
    try:
        current, previous = releases.rollback(db, store, args.slug)
    finally:
        store.close()
        db.close()
    print(
        f"{args.slug}: the alias points at release {previous} again (was {current}); release "
        f"{current} is kept and not migrated to again until the registry names another release"
    )
    return 0


def cmd_models_prune(args: argparse.Namespace) -> int:
    from vectorsvc.points import releases

    settings = _settings(args)
    db = _database(settings)
    store = _open_store(settings, required=True)
    assert store is not None
    try:
        dropped = releases.prune(db, store, args.slug, all_old=args.all_old)
    finally:
        store.close()
        db.close()
    names = ", ".join(f"release {r}" for r in dropped) or "nothing"
    print(f"{args.slug}: deleted {names}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
