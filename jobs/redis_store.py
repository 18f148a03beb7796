"""Job store on Redis (production).

Keys (all under `prefix`):
  job:{id}              hash, every field JSON-encoded
  owner:{owner}         sorted set of the owner's job ids, score = created_at in microseconds
  queued                set of queued job ids (queue depth, admission control, the sweeper)
  held                  set of preparing / running job ids (the recovery watchdog)
  lock:{name}           a lock taken with SET NX PX (one watchdog run per interval across workers)
  expiry                sorted set of succeeded job ids, score = expires_at (janitor)
  idem:{owner}:{key}    JSON {job_id, request_hash}, expires with the results
  worker:{id}           JSON heartbeat, expires after its TTL; workers = sorted set id -> expiry
  events:{id}           stream of the job's status and progress events (`jobs.events`), capped, expiring
                        with the record

Status changes run as Lua scripts, so check-and-set is atomic even with many gateways and workers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import redis

from jobs.events import MAX_EVENTS, events_key, status_event
from jobs.record import (
    IdempotencyConflict,
    JobRecord,
    JobStatus,
    JobStore,
    StoreUnavailable,
    decode_cursor,
    dumps,
    encode_cursor,
)

# KEYS: 1 job, 2 owner, 3 queued, 4 events, [5 idempotency key]
# ARGV: 1 id, 2 score, 3 idempotency value, 4 its TTL, 5 first event, 6 events cap, 7 events TTL,
#       8.. the field/value pairs
_CREATE = """
if #KEYS == 5 then
  local existing = redis.call('GET', KEYS[5])
  if existing then return existing end
  redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'data', ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[7])
return false
"""

# KEYS: 1 job, 2 queued, 3 expiry, 4 held, 5 events
# ARGV: 1 id, 2 allowed statuses ('|'-joined, JSON-encoded), 3 new status (JSON) or '',
#       4 expiry score or '', 5 key TTL seconds or '', 6 event (JSON) or '', 7 events cap,
#       8 events TTL while the record has none, 9 n = number of expected fields,
#       10 .. 9+2n expected field/value pairs (JSON), then the field/value pairs to write
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local ok = false
for s in string.gmatch(ARGV[2], '[^|]+') do
  if s == cur then ok = true end
end
if not ok then return false end
local n = tonumber(ARGV[9])
for i = 0, n - 1 do
  local have = redis.call('HGET', KEYS[1], ARGV[10 + 2 * i])
  if have == false then have = 'null' end
  if have ~= ARGV[11 + 2 * i] then return false end
end
local first = 10 + 2 * n
if #ARGV >= first then redis.call('HSET', KEYS[1], unpack(ARGV, first)) end
if ARGV[3] ~= '' then
  if ARGV[3] == '"queued"' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
  if ARGV[3] == '"preparing"' or ARGV[3] == '"running"' then
    redis.call('SADD', KEYS[4], ARGV[1])
  else
    redis.call('SREM', KEYS[4], ARGV[1])
  end
  if ARGV[3] ~= '"succeeded"' then redis.call('ZREM', KEYS[3], ARGV[1]) end
end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
if ARGV[3] ~= '' and ARGV[6] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'data', ARGV[6])
  if ARGV[5] ~= '' then redis.call('EXPIRE', KEYS[5], ARGV[5]) else redis.call('EXPIRE', KEYS[5], ARGV[8]) end
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: 1 job, 2 events; ARGV: 1 progress (JSON), 2 event (JSON), 3 events cap, 4 events TTL
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  if redis.call('HGET', KEYS[1], 'status') == '"running"' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[4])
  end
end
return 0
"""

_WEBHOOK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'webhook', ARGV[1]) end
return 0
"""

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_on_connection_error(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"job store unreachable: {exc}") from exc

    return wrapper


def _decode(raw: dict[str, str] | list[str]) -> JobRecord:
    if isinstance(raw, list):  # HGETALL returned by a script: flat [field, value, ...]
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    return JobRecord.from_fields({k: json.loads(v) for k, v in raw.items()})


class RedisJobStore(JobStore):
    def __init__(self, url: str, prefix: str = "diffv2s", record_ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        self.p = prefix
        self.record_ttl_s = record_ttl_s
        self._create = self.r.register_script(_CREATE)
        self._transition = self.r.register_script(_TRANSITION)
        self._progress = self.r.register_script(_PROGRESS)
        self._webhook = self.r.register_script(_WEBHOOK)

    def _job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def _owner(self, owner: str) -> str:
        return f"{self.p}:owner:{owner}"

    def _events(self, job_id: str) -> str:
        return events_key(self.p, job_id)

    def _idem(self, owner: str, key: str) -> str:
        return f"{self.p}:idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    @_unavailable_on_connection_error
    def create(self, job: JobRecord, idempotency_ttl_s: int) -> tuple[JobRecord, bool]:
        keys = [self._job(job.id), self._owner(job.owner), f"{self.p}:queued", self._events(job.id)]
        idem_value = ""
        if job.idempotency_key:
            keys.append(self._idem(job.owner, job.idempotency_key))
            idem_value = dumps({"job_id": job.id, "request_hash": job.request_hash})
        pairs: list[Any] = []
        for k, v in job.to_fields().items():
            pairs += [k, dumps(v)]
        first_event = dumps(status_event(str(job.status), job.created_at, {}))
        existing = self._create(
            keys=keys,
            args=[
                job.id,
                job.created_us,
                idem_value,
                idempotency_ttl_s,
                first_event,
                MAX_EVENTS,
                self.record_ttl_s,
                *pairs,
            ],
        )
        if existing is None:
            return job, True
        ref = json.loads(existing)
        if ref["request_hash"] != job.request_hash:
            raise IdempotencyConflict(ref["job_id"])
        old = self.get(ref["job_id"])
        if old is None:  # the record was purged while the key lived: let the caller retry fresh
            self.r.delete(keys[4])
            return self.create(job, idempotency_ttl_s)
        return old, False

    @_unavailable_on_connection_error
    def get(self, job_id: str) -> JobRecord | None:
        raw = cast(dict[str, str], self.r.hgetall(self._job(job_id)))
        return _decode(raw) if raw else None

    @_unavailable_on_connection_error
    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        pipe = self.r.pipeline()
        pipe.delete(self._job(job_id))
        pipe.delete(self._events(job_id))
        pipe.zrem(self._owner(job.owner), job_id)
        pipe.srem(f"{self.p}:queued", job_id)
        pipe.srem(f"{self.p}:held", job_id)
        pipe.zrem(f"{self.p}:expiry", job_id)
        if job.idempotency_key:
            pipe.delete(self._idem(job.owner, job.idempotency_key))
        pipe.execute()

    @_unavailable_on_connection_error
    def compare_and_set(
        self,
        job_id: str,
        allowed: set[JobStatus] | frozenset[JobStatus],
        changes: dict[str, Any],
        expect: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        new_status = changes.get("status")
        pairs: list[Any] = []
        for k, v in changes.items():
            pairs += [k, dumps(str(v) if k == "status" else v)]
        expiry = ""
        ttl = ""
        if new_status is not None and JobStatus(new_status) in (
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.EXPIRED,
        ):
            expires_at = changes.get("expires_at")
            if JobStatus(new_status) == JobStatus.SUCCEEDED and expires_at is not None:
                expiry = repr(float(expires_at))
            base = max(0.0, float(expires_at) - time.time()) if expires_at is not None else 0.0
            ttl = str(int(base + self.record_ttl_s))
        expected: list[Any] = []
        for k, v in (expect or {}).items():
            expected += [k, dumps(v)]
        raw = self._transition(
            keys=[
                self._job(job_id),
                f"{self.p}:queued",
                f"{self.p}:expiry",
                f"{self.p}:held",
                self._events(job_id),
            ],
            args=[
                job_id,
                "|".join(dumps(str(s)) for s in allowed),
                dumps(str(new_status)) if new_status is not None else "",
                expiry,
                ttl,
                dumps(event) if event is not None else "",
                MAX_EVENTS,
                self.record_ttl_s,
                len(expected) // 2,
                *expected,
                *pairs,
            ],
        )
        return _decode(raw) if raw else None

    def _jobs_in(self, index: str) -> list[JobRecord]:
        ids = sorted(cast(set[str], self.r.smembers(f"{self.p}:{index}")))
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._job(job_id))
        out, stale = [], []
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(_decode(raw))
            else:
                stale.append(job_id)
        if stale:  # the record expired or was deleted
            self.r.srem(f"{self.p}:{index}", *stale)
        return out

    @_unavailable_on_connection_error
    def held_jobs(self) -> list[JobRecord]:
        return [j for j in self._jobs_in("held") if j.status in (JobStatus.PREPARING, JobStatus.RUNNING)]

    @_unavailable_on_connection_error
    def queued_jobs(self) -> list[JobRecord]:
        return [j for j in self._jobs_in("queued") if j.status == JobStatus.QUEUED]

    @_unavailable_on_connection_error
    def try_lock(self, name: str, ttl_s: float) -> bool:
        return bool(self.r.set(f"{self.p}:lock:{name}", "1", nx=True, px=max(1, int(ttl_s * 1000))))

    @_unavailable_on_connection_error
    def set_progress(self, job_ids: list[str], step: int, total: int) -> None:
        value = dumps({"step": step, "total": total})
        event = dumps(
            {"type": "progress", "stage": "sampling", "step": step, "total": total, "at": time.time()}
        )
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            self._progress(
                keys=[self._job(job_id), self._events(job_id)],
                args=[value, event, MAX_EVENTS, self.record_ttl_s],
                client=pipe,
            )
        pipe.execute()

    @_unavailable_on_connection_error
    def update_webhook(self, job_id: str, webhook: dict[str, Any]) -> None:
        self._webhook(keys=[self._job(job_id)], args=[dumps(webhook)])

    @_unavailable_on_connection_error
    def list_jobs(
        self, owner: str, status: JobStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        key = self._owner(owner)
        after: tuple[int, str] | None = decode_cursor(cursor) if cursor else None
        top = str(after[0]) if after else "+inf"
        out: list[JobRecord] = []
        offset = 0
        chunk = max(2 * limit, 50)
        while len(out) <= limit:
            rows = cast(
                list[tuple[str, float]],
                self.r.zrevrangebyscore(key, top, "-inf", start=offset, num=chunk, withscores=True),
            )
            if not rows:
                break
            offset += len(rows)
            # Equal scores come in descending id order, matching the (created_us, id) cursor order.
            ids = [m for m, s in rows if not (after and int(s) == after[0] and m >= after[1])]
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._job(job_id))
            stale = []
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:
                    stale.append(job_id)
                    continue
                job = _decode(raw)
                if status is None or job.status == status:
                    out.append(job)
            if stale:
                self.r.zrem(key, *stale)
                offset -= len(stale)
            if len(rows) < chunk:
                break
        page = out[:limit]
        next_cursor = encode_cursor(page[-1].created_us, page[-1].id) if len(out) > limit else None
        return page, next_cursor

    @_unavailable_on_connection_error
    def queued_count(self) -> int:
        return int(cast(int, self.r.scard(f"{self.p}:queued")))

    @_unavailable_on_connection_error
    def due_for_expiry(self, at: float, limit: int = 100) -> list[JobRecord]:
        ids = cast(list[str], self.r.zrangebyscore(f"{self.p}:expiry", "-inf", at, start=0, num=limit))
        out = []
        for job_id in ids:
            job = self.get(job_id)
            if job is None or job.status != JobStatus.SUCCEEDED:
                self.r.zrem(f"{self.p}:expiry", job_id)
                continue
            out.append(job)
        return out

    def purge_records(self, before: float) -> int:
        return 0  # Redis drops finished records by key TTL (set at the terminal transition)

    @_unavailable_on_connection_error
    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
        pipe = self.r.pipeline()
        pipe.set(f"{self.p}:worker:{worker_id}", dumps(info), px=int(ttl_s * 1000))
        pipe.zadd(f"{self.p}:workers", {worker_id: time.time() + ttl_s})
        pipe.execute()

    @_unavailable_on_connection_error
    def remove_worker(self, worker_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(f"{self.p}:worker:{worker_id}")
        pipe.zrem(f"{self.p}:workers", worker_id)
        pipe.execute()

    @_unavailable_on_connection_error
    def live_workers(self) -> list[dict[str, Any]]:
        self.r.zremrangebyscore(f"{self.p}:workers", "-inf", time.time())
        ids = cast(list[str], self.r.zrange(f"{self.p}:workers", 0, -1))
        if not ids:
            return []
        raws = cast(list[str | None], self.r.mget([f"{self.p}:worker:{i}" for i in ids]))
        return [json.loads(r) for r in raws if r]

    @_unavailable_on_connection_error
    def ping(self) -> None:
        self.r.ping()

    def close(self) -> None:
        self.r.close()
