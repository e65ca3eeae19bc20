"""The typed application state the lifespan builds and the dependencies read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from vectorsvc.auth.keys import ApiKeyCache
from vectorsvc.auth.throttle import AuthThrottle
from vectorsvc.auth.tokens import AccessTokenVerifier
from vectorsvc.billing.funds import Funds
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.embedding import EmbeddingService
from vectorsvc.limits import RateLimiter
from vectorsvc.locks import WorkspaceLocks
from vectorsvc.media.service import MediaService
from vectorsvc.model_registry.registry import ModelRegistry
from vectorsvc.points.collections import CollectionManager
from vectorsvc.vectorstore.base import VectorStore


@dataclass
class AppState:
    settings: Settings
    db: Database
    registry: ModelRegistry
    store: VectorStore
    embeddings: EmbeddingService
    token_verifier: AccessTokenVerifier
    collections: CollectionManager
    media: MediaService
    rate_limiter: RateLimiter
    write_locks: WorkspaceLocks
    funds: Funds
    api_keys: ApiKeyCache
    auth_throttle: AuthThrottle


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.vectorsvc
    return state


async def _state_dependency(request: Request) -> AppState:
    # async: FastAPI runs a plain-def dependency on a worker thread, a hop that cost every
    # request more than the attribute read it does.
    return get_state(request)


StateDep = Annotated[AppState, Depends(_state_dependency)]
