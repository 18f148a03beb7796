"""Issue 17, access control: another key's job is 404 `job_not_found` on every job route (the same answer
as a job that does not exist, so ids cannot be probed) and is never listed. In-process app, real Redis.
The routes are read from the OpenAPI schema, so a job route added later fails here until it is covered."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from jobs import JobStatus
from jobs.redis_store import RedisJobStore
from jobs.storage import LocalStorage, audio_key, video_key
from service.settings import Settings

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., httpx.AsyncClient]
ROUTES = {
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/audio"),
    ("get", "/v1/jobs/{job_id}/video"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("post", "/v1/jobs/{job_id}/cancel"),
}


def _finish(settings: Settings, store: RedisJobStore, job_id: str) -> None:
    """Finish the job the way a worker does: result files first, then the record."""
    storage = LocalStorage(settings.storage_dir)
    with storage.writer(audio_key(job_id)) as f:
        f.write(b"RIFF" + bytes(100))
    with storage.writer(video_key(job_id)) as f:
        f.write(b"\0\0\0\x18ftypmp42" + bytes(100))
    now = time.time()
    store.compare_and_set(job_id, {JobStatus.QUEUED}, {"status": JobStatus.RUNNING, "started_at": now})
    store.compare_and_set(
        job_id,
        {JobStatus.RUNNING},
        {
            "status": JobStatus.SUCCEEDED,
            "finished_at": now,
            "expires_at": now + 3600,
            "audio_key": audio_key(job_id),
            "video_key": video_key(job_id),
        },
    )


async def test_another_keys_job_is_404_on_every_route_and_never_listed(
    settings: Settings,
    store: RedisJobStore,
    media: dict[str, Path],
    make_client: MakeClient,
    keys: tuple[str, str],
) -> None:
    key_a, key_b = keys
    async with make_client(settings, key_a) as a, make_client(settings, key_b) as b:
        schema = (await a.get("/openapi.json")).json()
        job_routes = {
            (method, path) for path, ops in schema["paths"].items() if "{job_id}" in path for method in ops
        }
        assert job_routes == ROUTES, "a job route is not covered by this test"

        with media["video"].open("rb") as fh:
            sent = await a.post(
                "/v1/synthesize", files={"video": ("clip.mp4", fh, "video/mp4")}, data={"output": "mp4"}
            )
        assert sent.status_code == 202, sent.text
        job_id = sent.json()["id"]
        _finish(settings, store, job_id)
        missing = str(uuid.uuid4())

        for method, path in sorted(ROUTES):
            url = path.format(job_id=job_id)
            own = await a.request(method, url)
            if path.endswith("/cancel"):
                assert own.status_code == 409, own.text  # a finished job cannot be canceled, but it is found
            else:
                assert own.status_code == 200, (url, own.text)
            theirs = await b.request(method, url)
            nobodys = await b.request(method, path.format(job_id=missing))
            for resp in (theirs, nobodys):
                assert resp.status_code == 404, (method, url, resp.text)
                assert resp.json()["error"]["code"] == "job_not_found"
            # The same answer as a job that does not exist (the message names the id asked for).
            assert theirs.json()["error"]["message"].replace(job_id, "X") == nobodys.json()["error"][
                "message"
            ].replace(missing, "X")

        for query in ("", "?status=succeeded", "?limit=100"):
            assert (await b.get(f"/v1/jobs{query}")).json()["jobs"] == [], query
            assert [j["id"] for j in (await a.get(f"/v1/jobs{query}")).json()["jobs"]] == [job_id]
        # B's attempts changed nothing.
        assert (await a.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded"
