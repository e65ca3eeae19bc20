"""`create_app()`: the FastAPI application and a lifespan that opens and closes its parts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from vectorsvc import __version__
from vectorsvc.accounts.endpoints import router as accounts_router
from vectorsvc.accounts.service import SessionAccessTokens
from vectorsvc.auth.keys import ApiKeyCache
from vectorsvc.auth.shared_limits import SharedRateLimiter
from vectorsvc.auth.throttle import AuthThrottle
from vectorsvc.billing.endpoints import router as billing_router
from vectorsvc.billing.funds import Funds
from vectorsvc.billing.service import opening_micro_credits
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.embedding import (
    EmbedderLoader,
    EmbedderSettings,
    EmbeddingService,
    model_parallelism,
)
from vectorsvc.errors import ERROR_RESPONSES, install_error_handlers
from vectorsvc.health import router as health_router
from vectorsvc.knowledge_bases.endpoints import router as knowledge_bases_router
from vectorsvc.limits import BodySizeLimitMiddleware, RateLimiter
from vectorsvc.locks import WorkspaceLocks
from vectorsvc.marketplace.endpoints import router as marketplace_router
from vectorsvc.media.endpoints import router as media_router
from vectorsvc.media.service import MediaService
from vectorsvc.model_registry.registry import ModelRegistry
from vectorsvc.observability import Metrics, ObservabilityMiddleware
from vectorsvc.points.collections import CollectionManager
from vectorsvc.runs.background import BackgroundRuns
from vectorsvc.runs.endpoints import router as runs_router
from vectorsvc.runs.intents import reconcile_pending
from vectorsvc.runs.migration import ReleaseMigrations
from vectorsvc.state import AppState
from vectorsvc.vectorstore import VectorStore, open_configured_store
from vectorsvc.web import install_web
from vectorsvc.web import router as web_router

logger = logging.getLogger(__name__)


def build_state(
    settings: Settings, loader: EmbedderLoader | None = None, metrics: Metrics | None = None
) -> AppState:
    """Open every part the service needs (blocking: database, vector store)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    db.migrate()
    registry = ModelRegistry.from_settings(settings)
    store = open_configured_store(settings)
    embedder_settings = EmbedderSettings.from_settings(settings)
    workers, threads = model_parallelism(settings.model_workers, settings.model_threads)
    embeddings = EmbeddingService(
        registry,
        workers=workers,
        threads_per_worker=threads,
        loader=loader or embedder_settings.load,
        batch_wait_ms=settings.batch_wait_ms,
        on_batch=metrics.observe_batch if metrics else None,
        weights_check=embedder_settings.check,
    )
    return AppState(
        settings=settings,
        db=db,
        registry=registry,
        store=store,
        embeddings=embeddings,
        token_verifier=SessionAccessTokens(db),
        collections=CollectionManager(store),
        media=MediaService.from_settings(settings, db),
        rate_limiter=(
            SharedRateLimiter(db, settings.rate_limit_per_minute, settings.rate_limit_burst)
            if db.engine.dialect.name == "postgresql"  # replicas share one budget
            else RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        ),
        write_locks=WorkspaceLocks(),
        funds=Funds(
            db,
            opening_micro_credits=opening_micro_credits(settings),
            reservation_ttl_s=settings.reservation_ttl_s,
        ),
        api_keys=ApiKeyCache(ttl_s=settings.api_key_cache_s),
        auth_throttle=AuthThrottle(settings, db),
    )


async def _warm_store(store: VectorStore, metrics: Metrics, max_bytes: int) -> int:
    started = time.perf_counter()
    read = await anyio.to_thread.run_sync(store.warm, max_bytes)
    metrics.observe_store_warm(read, time.perf_counter() - started)
    return read


async def _keep_store_warm(
    store: VectorStore, metrics: Metrics, interval_s: float, max_bytes: int
) -> None:
    """`store.warm()` every `interval_s` (its reads release the GIL); a failure is logged
    and retried at the next interval."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await _warm_store(store, metrics, max_bytes)
        except Exception:
            logger.exception("warming the vector store failed")


async def _collect_media(media: MediaService, interval_s: float) -> None:
    """`media.collect()` every `interval_s`: expired uploads and unreferenced blobs go; a
    failure is logged and retried at the next interval."""
    while True:
        await anyio.sleep(interval_s)
        try:
            report = await anyio.to_thread.run_sync(media.collect)
        except Exception:
            logger.exception("collecting media failed")
            continue
        if report.removed_anything():
            logger.info("media collected: %s", report)


def create_app(
    settings: Settings | None = None, *, embedder_loader: EmbedderLoader | None = None
) -> FastAPI:
    """The application. `embedder_loader` lets tests share loaded models between apps."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await anyio.to_thread.run_sync(build_state, settings, embedder_loader, metrics)
        app.state.vectorsvc = state
        app.state.background_runs = BackgroundRuns(state)
        # Index writes a crash cut between their upsert and their charge: charged now,
        # before any run (a background run's resume included) can see their points.
        await anyio.to_thread.run_sync(reconcile_pending, state)
        # Each model's live release against the registry's: migrations start or resume
        # (in the background), before any request reads a namespace.
        app.state.release_migrations = ReleaseMigrations(state)
        await app.state.release_migrations.start()
        await anyio.to_thread.run_sync(state.embeddings.preload, settings.preload_model_slugs)
        if settings.warm_store:
            started = time.perf_counter()
            read = await _warm_store(state.store, metrics, settings.warm_store_max_bytes)
            logger.info(
                "vector store warmed: %.0f MB in %.1fs", read / 1e6, time.perf_counter() - started
            )
            if read >= settings.warm_store_max_bytes:
                logger.warning(
                    "the vector store is larger than VECTORSVC_WARM_STORE_MAX_MB (%d MB): only "
                    "that much is kept in the page cache",
                    settings.warm_store_max_bytes // (1024 * 1024),
                )
        # What start-up made (models, registry, routes: about half a million objects) lives
        # as long as the app: out of the collector's reach, a full collection no longer walks
        # it (docs/performance.md). No collect() first: start-up leaves about a hundred
        # unreachable objects, not worth a full collection.
        gc.freeze()
        logger.info("vectorsvc ready: store=%s", state.store.backend_name)
        await app.state.background_runs.start()
        state.funds.start()
        warmer = None
        if settings.warm_store and settings.warm_store_interval_s > 0:
            warmer = asyncio.get_running_loop().create_task(
                _keep_store_warm(
                    state.store,
                    metrics,
                    settings.warm_store_interval_s,
                    settings.warm_store_max_bytes,
                )
            )
        collector = None
        if settings.media_gc_interval_s > 0:
            collector = asyncio.get_running_loop().create_task(
                _collect_media(state.media, settings.media_gc_interval_s)
            )
        try:
            yield
        finally:
            if collector is not None:
                collector.cancel()  # a collect() under way finishes first (its thread is not cut)
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            if warmer is not None:
                warmer.cancel()  # a warm() under way finishes first (its thread is not cut)
                with contextlib.suppress(asyncio.CancelledError):
                    await warmer
            await app.state.release_migrations.stop()
            await app.state.background_runs.stop()
            await state.funds.aclose()
            await state.embeddings.aclose()
            await anyio.to_thread.run_sync(state.store.close)
            state.auth_throttle.close()
            state.db.close()
            gc.unfreeze()  # what this app made may be collected again once it is gone

    app = FastAPI(
        title="vectorsvc",
        version=__version__,
        summary="Vector index and search for scoped knowledge bases",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        exempt_prefixes=("/api/media/uploads/",),
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    if settings.trusted_proxy_list:
        # Outermost: every part below sees the client a trusted proxy names. `vectorsvc
        # serve` turns uvicorn's own copy off, so only this setting decides.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)
    for router in (
        health_router,
        runs_router,
        marketplace_router,
        billing_router,
        media_router,
        accounts_router,
        web_router,
        knowledge_bases_router,
    ):
        _add_routes(app, router)
    install_web(app)
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, added to the app's own list rather than through
    `include_router`: FastAPI 0.16x resolves an included router's routes anew on each
    request (it walks every router's routes to see whether they changed), a good share of
    a search's event-loop time (docs/performance.md). The routers carry their prefixes, tags
    and the error responses themselves, so the routes and the OpenAPI document are the same."""
    app.router.routes.extend(router.routes)
