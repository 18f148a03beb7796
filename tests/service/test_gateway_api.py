"""The gateway's HTTP contract against a real Redis store and broker (no worker: jobs stay queued)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from jobs import JobStatus
from jobs.redis_store import RedisJobStore
from jobs.storage import LocalStorage, audio_key
from service.settings import Settings

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., httpx.AsyncClient]


def files_for(path: Path, name: str | None = None) -> dict[str, tuple[str, bytes, str]]:
    return {"video": (name or path.name, path.read_bytes(), "video/mp4")}


async def submit(client: httpx.AsyncClient, path: Path, **form: str) -> httpx.Response:
    return await client.post("/v1/synthesize", files=files_for(path), data=form)


def stored_files(settings: Settings, sub: str) -> list[Path]:
    d = settings.storage_dir / sub
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def assert_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


async def test_submit_queues_job_with_upload_in_storage(
    client: httpx.AsyncClient, settings: Settings, media: dict[str, Path], rdb: redis.Redis
) -> None:
    resp = await submit(client, media["video"], steps="4", seed="7", sampler="ddim", noise_scale="0.7")
    assert resp.status_code == 202, resp.text
    job = resp.json()
    job_id = job["id"]
    assert uuid.UUID(job_id).version == 4
    assert resp.headers["location"] == f"/v1/jobs/{job_id}"
    assert int(resp.headers["retry-after"]) >= 1
    assert job["status"] == "queued"
    assert job["params"] == {
        "sampler": "ddim",
        "steps": 4,
        "seed": 7,
        "guidance": 0.0,
        "cfg_scale": None,
        "noise_scale": 0.7,
    }
    assert job["urls"]["cancel"] == f"/v1/jobs/{job_id}/cancel"
    assert job["urls"]["audio"] is None
    assert job["video_seconds"] == pytest.approx(1.0, abs=0.05)

    # The upload sits in storage byte for byte, and the broker holds one message for this job id only.
    (stored,) = stored_files(settings, "inputs")
    assert stored.read_bytes() == media["video"].read_bytes()
    assert stored.name == f"{job_id}.upload"  # a neutral name, whatever the client sent
    assert stored_files(settings, "tmp") == []
    messages = rdb.lrange(settings.queue_name, 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["id"] == job_id
    assert message["headers"]["task"] == "diffv2s.synthesize"

    got = await client.get(resp.headers["location"])
    assert got.status_code == 200
    assert got.json()["id"] == job_id
    assert got.json()["status"] == "queued"


async def test_auth_is_required_and_keys_are_isolated(
    settings: Settings, media: dict[str, Path], make_client: MakeClient, keys: tuple[str, str]
) -> None:
    key_a, key_b = keys
    async with make_client(settings, key=None) as anon, make_client(settings, key="wrong") as wrong:
        for c in (anon, wrong):
            resp = await submit(c, media["video"])
            assert_error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer"
            assert_error(await c.get("/v1/jobs"), 401, "unauthorized")
    async with make_client(settings, key_a) as a, make_client(settings, key_b) as b:
        created = (await submit(a, media["video"])).json()
        job_id = created["id"]
        # Sampler, steps, CFG and noise scale not given: null, i.e. the model's defaults, decided by the
        # worker's checkpoint.
        assert created["params"]["sampler"] is None and created["params"]["steps"] is None
        assert created["params"]["cfg_scale"] is None and created["params"]["noise_scale"] is None
        assert_error(await b.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
        assert_error(await b.get(f"/v1/jobs/{job_id}/audio"), 404, "job_not_found")
        assert_error(await b.post(f"/v1/jobs/{job_id}/cancel"), 404, "job_not_found")
        assert (await b.get("/v1/jobs")).json()["jobs"] == []
        assert [j["id"] for j in (await a.get("/v1/jobs")).json()["jobs"]] == [job_id]
        assert_error(await a.get(f"/v1/jobs/{uuid.uuid4()}"), 404, "job_not_found")
        assert_error(await a.get("/v1/jobs/not-a-uuid"), 404, "job_not_found")


async def test_idempotency_key_replays_or_conflicts(
    settings: Settings,
    media: dict[str, Path],
    rdb: redis.Redis,
    make_client: MakeClient,
    keys: tuple[str, str],
) -> None:
    key_a, key_b = keys
    async with make_client(settings, key_a) as a, make_client(settings, key_b) as b:
        headers = {"Idempotency-Key": "order-42"}
        first = await a.post(
            "/v1/synthesize", files=files_for(media["video"]), data={"seed": "1"}, headers=headers
        )
        again = await a.post(
            "/v1/synthesize", files=files_for(media["video"]), data={"seed": "1"}, headers=headers
        )
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers.get("idempotent-replayed") == "true"
        assert rdb.llen(settings.queue_name) == 1
        assert len(stored_files(settings, "inputs")) == 1

        other_params = await a.post(
            "/v1/synthesize", files=files_for(media["video"]), data={"seed": "2"}, headers=headers
        )
        assert_error(other_params, 409, "idempotency_key_reused")
        other_video = await a.post(
            "/v1/synthesize", files=files_for(media["video_long"]), data={"seed": "1"}, headers=headers
        )
        assert_error(other_video, 409, "idempotency_key_reused")
        # Keys are scoped per API key: another caller's same Idempotency-Key is a new job.
        other_owner = await b.post(
            "/v1/synthesize", files=files_for(media["video"]), data={"seed": "1"}, headers=headers
        )
        assert other_owner.status_code == 202
        assert other_owner.json()["id"] != first.json()["id"]
        assert rdb.llen(settings.queue_name) == 2
        assert len(stored_files(settings, "inputs")) == 2


@pytest.mark.parametrize(
    "form",
    [
        {"steps": "0"},
        {"steps": "1001"},
        {"steps": "four"},
        {"sampler": "euler"},
        {"seed": "-1"},
        {"guidance": "nan"},
        {"guidance": "-1"},
        {"cfg_scale": "21"},
        {"noise_scale": "-0.1"},
        {"noise_scale": "2.5"},
        {"noise_scale": "nan"},
        {"output": "ogg"},
        {"unknown_option": "1"},
    ],
)
async def test_bad_parameters_are_422_and_leave_nothing(
    client: httpx.AsyncClient,
    settings: Settings,
    media: dict[str, Path],
    rdb: redis.Redis,
    form: dict[str, str],
) -> None:
    resp = await submit(client, media["video"], **form)
    assert_error(resp, 422, "invalid_parameter")
    assert stored_files(settings, "inputs") == []
    assert rdb.llen(settings.queue_name) == 0


async def test_query_validation_and_unknown_routes_use_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/jobs?limit=0"), 422, "invalid_parameter")
    assert_error(await client.get("/v1/jobs?status=sleeping"), 422, "invalid_parameter")
    assert_error(await client.get("/v1/jobs?cursor=%%%"), 422, "invalid_parameter")
    assert_error(await client.get("/v2/nothing"), 404, "not_found")
    assert_error(await client.delete("/v1/synthesize"), 405, "method_not_allowed")


@pytest.mark.parametrize("kind", ["png", "audio_only", "random", "empty"])
async def test_non_video_uploads_are_415(
    client: httpx.AsyncClient, settings: Settings, media: dict[str, Path], kind: str
) -> None:
    extra = {"random": bytes(range(256)) * 40, "empty": b""}
    data = extra[kind] if kind in extra else media[kind].read_bytes()
    resp = await client.post("/v1/synthesize", files={"video": ("upload.mp4", data, "video/mp4")})
    code = {"png": "unsupported_video", "audio_only": "no_video_stream", "random": "unsupported_video"}
    assert_error(resp, 415, code.get(kind, "empty_file"))
    assert stored_files(settings, "inputs") == []


async def test_not_multipart_or_no_video_part(client: httpx.AsyncClient, media: dict[str, Path]) -> None:
    assert_error(await client.post("/v1/synthesize", json={"video": "x"}), 415, "unsupported_media_type")
    resp = await client.post("/v1/synthesize", files={"other": ("a.mp4", media["video"].read_bytes())})
    assert_error(resp, 422, "invalid_request")
    resp = await client.post(
        "/v1/synthesize",
        content=b'--xyz\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\nabc',
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert resp.status_code in (415, 422), resp.text  # truncated body: never a 500


async def test_video_duration_limits_are_422(
    settings: Settings, media: dict[str, Path], make_client: MakeClient
) -> None:
    short = settings.model_copy(update={"max_video_seconds": 2.0})
    async with make_client(short) as c:
        assert_error(await submit(c, media["video_long"]), 422, "video_too_long")
    strict = settings.model_copy(update={"min_video_seconds": 2.0})
    async with make_client(strict) as c:
        assert_error(await submit(c, media["video"]), 422, "video_too_short")


async def test_upload_over_limit_is_413_with_and_without_content_length(
    client: httpx.AsyncClient, settings: Settings, media: dict[str, Path]
) -> None:
    big = media["video"].read_bytes() + b"\0" * (settings.max_upload_bytes + 1)
    resp = await client.post("/v1/synthesize", files={"video": ("big.mp4", big, "video/mp4")})
    assert_error(resp, 413, "upload_too_large")

    # Chunked, no Content-Length: the limit must be enforced while the body streams in.
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    sent = [0]

    async def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(64):  # 4 MB in 64 KB chunks, the limit is 1 MB
            sent[0] += 1
            yield b"\1" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = await client.post(
        "/v1/synthesize",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(resp, 413, "upload_too_large")
    assert stored_files(settings, "inputs") == []
    assert stored_files(settings, "tmp") == []


async def test_queue_full_is_429_with_retry_after(
    settings: Settings, media: dict[str, Path], make_client: MakeClient
) -> None:
    small = settings.model_copy(update={"queue_max_depth": 2})
    async with make_client(small) as c:
        for _ in range(2):
            assert (await submit(c, media["video"])).status_code == 202
        resp = await submit(c, media["video"])
        assert_error(resp, 429, "queue_full")
        assert int(resp.headers["retry-after"]) == settings.retry_after_s
        # A canceled job leaves the queue, so there is room again.
        first = (await c.get("/v1/jobs")).json()["jobs"][0]["id"]
        assert (await c.post(f"/v1/jobs/{first}/cancel")).status_code == 200
        assert (await submit(c, media["video"])).status_code == 202


async def test_broker_down_is_503_and_keeps_no_job(
    settings: Settings, media: dict[str, Path], make_client: MakeClient
) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    async with make_client(down) as c:
        resp = await submit(c, media["video"])
        assert_error(resp, 503, "broker_unavailable")
        assert int(resp.headers["retry-after"]) >= 1
        assert (await c.get("/v1/jobs")).json()["jobs"] == []
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"].startswith("error")
    assert stored_files(settings, "inputs") == []


async def test_list_filters_by_status_and_pages_with_a_cursor(
    client: httpx.AsyncClient, media: dict[str, Path]
) -> None:
    ids = [(await submit(client, media["video"], seed=str(i))).json()["id"] for i in range(5)]
    for job_id in ids[1:3]:
        assert (await client.post(f"/v1/jobs/{job_id}/cancel")).json()["status"] == "canceled"

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/jobs", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once
    assert pages == 3
    canceled = (await client.get("/v1/jobs", params={"status": "canceled"})).json()["jobs"]
    assert sorted(j["id"] for j in canceled) == sorted(ids[1:3])
    queued = (await client.get("/v1/jobs", params={"status": "queued", "limit": "100"})).json()
    assert sorted(j["id"] for j in queued["jobs"]) == sorted([ids[0], *ids[3:]])
    assert queued["next_cursor"] is None


async def test_cancel_rules(
    client: httpx.AsyncClient, settings: Settings, store: RedisJobStore, media: dict[str, Path]
) -> None:
    job_id = (await submit(client, media["video"])).json()["id"]
    resp = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "canceled"
    assert resp.json()["finished_at"] is not None
    assert stored_files(settings, "inputs") == []  # the upload is removed with the job
    assert (await client.post(f"/v1/jobs/{job_id}/cancel")).json()["status"] == "canceled"
    assert_error(await client.get(f"/v1/jobs/{job_id}/audio"), 409, "no_result")
    assert store.queued_count() == 0

    running = (await submit(client, media["video"])).json()["id"]
    assert store.compare_and_set(
        running, {JobStatus.QUEUED}, {"status": JobStatus.RUNNING, "started_at": time.time()}
    )
    assert_error(await client.post(f"/v1/jobs/{running}/cancel"), 409, "job_not_cancelable")
    assert (await client.get(f"/v1/jobs/{running}")).json()["status"] == "running"


async def test_downloads_follow_the_job_state(
    client: httpx.AsyncClient, settings: Settings, store: RedisJobStore, media: dict[str, Path]
) -> None:
    job_id = (await submit(client, media["video"])).json()["id"]
    assert_error(await client.get(f"/v1/jobs/{job_id}/audio"), 409, "result_not_ready")
    assert_error(await client.get(f"/v1/jobs/{job_id}/video"), 404, "no_video_requested")

    # Finish the job the way a worker does: the result file first, then the record.
    wav = b"RIFF" + bytes(range(200))
    with LocalStorage(settings.storage_dir).writer(audio_key(job_id)) as f:
        f.write(wav)
    now = time.time()
    store.compare_and_set(job_id, {JobStatus.QUEUED}, {"status": JobStatus.RUNNING, "started_at": now})
    store.set_progress([job_id], 2, 4)
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["progress"] == {"step": 2, "total": 4}
    store.compare_and_set(
        job_id,
        {JobStatus.RUNNING},
        {
            "status": JobStatus.SUCCEEDED,
            "finished_at": now + 1,
            "expires_at": now + 3600,
            "audio_key": audio_key(job_id),
            "timings": {"sampling": 0.5, "total": 0.9},
            "batch_size": 3,
        },
    )
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded"
    assert job["urls"]["audio"] == f"/v1/jobs/{job_id}/audio"
    assert job["batch_size"] == 3
    assert job["timings"]["sampling"] == 0.5
    audio = await client.get(job["urls"]["audio"])
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "audio/wav"
    assert audio.content == wav

    # Past its expiry the result reads as expired (410) even before the janitor removed it.
    store.compare_and_set(job_id, {JobStatus.SUCCEEDED}, {"expires_at": time.time() - 1})
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "expired"
    assert_error(await client.get(f"/v1/jobs/{job_id}/audio"), 410, "result_expired")


async def test_health_and_readiness(client: httpx.AsyncClient, store: RedisJobStore) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    body = not_ready.json()
    assert body["error"]["code"] == "not_ready"
    assert body["checks"] == {
        "broker": "ok",
        "store": "ok",
        "storage": "ok",
        "workers": body["checks"]["workers"],
    }
    assert body["checks"]["workers"].startswith("error")

    store.heartbeat("w1", {"id": "w1"}, ttl_s=0.5)
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] == 1
    time.sleep(0.6)  # the heartbeat lapses: a dead worker makes the gateway unready again
    assert (await client.get("/readyz")).status_code == 503


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, store: RedisJobStore, media: dict[str, Path]
) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    before = (await client.get("/metrics")).text
    missing = f"/v1/jobs/{uuid.uuid4()}"
    for _ in range(3):
        await client.get(missing)
    await submit(client, media["video"])
    await submit(client, media["video"])
    text = (await client.get("/metrics")).text
    labels = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
    assert (
        sample(text, "diffv2s_http_requests_total", **labels)
        - sample(before, "diffv2s_http_requests_total", **labels)
        == 3
    )
    assert sample(text, "diffv2s_jobs_submitted_total") - sample(before, "diffv2s_jobs_submitted_total") == 2
    assert sample(text, "diffv2s_queue_depth") == store.queued_count() == 2
    post = {"route": "/v1/synthesize", "method": "POST"}
    assert sample(text, "diffv2s_http_request_duration_seconds_count", **post) >= 2
    assert missing not in text  # ids never become label values


async def test_openapi_documents_every_status(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"202", "401", "409", "413", "415", "422", "429", "503"} <= codes("/v1/synthesize", "post")
    assert {"200", "401", "404", "503"} <= codes("/v1/jobs/{job_id}", "get")
    assert {"200", "404", "409", "410"} <= codes("/v1/jobs/{job_id}/audio", "get")
    assert {"200", "404", "409", "410"} <= codes("/v1/jobs/{job_id}/video", "get")
    assert {"200", "404", "409"} <= codes("/v1/jobs/{job_id}/cancel", "post")
    assert {"200", "422"} <= codes("/v1/jobs", "get")
    assert {"200", "503"} <= codes("/readyz", "get")
    body = paths["/v1/synthesize"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"video", "sampler", "steps", "seed", "guidance", "output"} <= set(body["properties"])
    assert "Retry-After" in paths["/v1/synthesize"]["post"]["responses"]["429"]["headers"]
