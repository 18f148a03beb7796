"""Request dependencies as `Annotated` aliases: settings, job store, storage, queue, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs import JobStore
from jobs.storage import Storage
from service.errors import Unauthorized
from service.keys import KeyRing
from service.queue import JobQueue
from service.ratelimit import KeyQuotas
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def get_quotas(request: Request) -> KeyQuotas:
    quotas: KeyQuotas = request.app.state.quotas
    return quotas


def current_owner(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The caller's owner id (a hash of the key); raises 401 for a missing or unknown key and 429 when
    the key is over its request rate. The key itself is never logged or stored."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send `Authorization: Bearer <API key>`")
    keyring: KeyRing = request.app.state.keyring
    owner = keyring.owner(credentials.credentials)
    if owner is None:
        raise Unauthorized("unknown API key")
    get_quotas(request).hit_request(owner)
    return owner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
OwnerDep = Annotated[str, Depends(current_owner)]
QuotasDep = Annotated[KeyQuotas, Depends(get_quotas)]
