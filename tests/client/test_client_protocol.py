"""The client's pure parts, no server: retry delays, error classes from bodies, decoding, the
server-sent-events parser the `wait` stream uses (the service has no event stream yet)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from diffv2s_client import errors
from diffv2s_client.models import Job, JobStatus, Progress, SynthesisOptions, decode
from diffv2s_client.protocol import EventParser, RetryPolicy, ServerEvent, apply_event, events_unsupported

JOB = {
    "id": "5b0c1c0e-0000-4000-8000-000000000000",
    "status": "running",
    "created_at": "2025-01-02T03:04:05Z",
    "output": "wav",
    "params": {
        "sampler": None,
        "steps": 2,
        "seed": 0,
        "guidance": 0.0,
        "cfg_scale": None,
        "noise_scale": None,
    },
    "progress": {"step": 1, "total": 2},
    "urls": {"job": "/v1/jobs/5b0c1c0e-0000-4000-8000-000000000000"},
    "a_field_added_later": {"x": 1},
}


def response(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json=body, headers=headers, request=httpx.Request("GET", "http://x/v1/jobs")
    )


def test_retry_policy_honours_retry_after_within_its_bound() -> None:
    policy = RetryPolicy(max_retries=3, max_delay_s=10, backoff_s=0.5)
    assert policy.delay_s(1, 2.0) == 2.0
    assert policy.delay_s(1, 120.0) == 10.0  # a longer Retry-After is cut to the bound
    assert [policy.delay_s(n, None) for n in (1, 2, 3, 6)] == [0.5, 1.0, 2.0, 10.0]
    busy = errors.from_response(response(429, {"error": {"code": "queue_full", "message": "m"}}))
    assert policy.should_retry(3, busy) and not policy.should_retry(4, busy)
    refused = errors.from_response(response(422, {"error": {"code": "invalid_parameter", "message": "m"}}))
    assert not policy.should_retry(1, refused)
    assert policy.should_retry(1, errors.TransportError("refused"))


def test_errors_are_typed_by_code_then_status_then_family() -> None:
    e = errors.from_response(
        response(429, {"error": {"code": "queue_full", "message": "full"}}, {"Retry-After": "7"})
    )
    assert isinstance(e, errors.QueueFull) and isinstance(e, errors.TooManyRequests)
    assert (e.status_code, e.code, e.message, e.retry_after_s) == (429, "queue_full", "full", 7.0)
    e = errors.from_response(response(422, {"error": {"code": "no_face_found", "message": "no face"}}))
    assert type(e) is errors.Unprocessable and e.code == "no_face_found"
    e = errors.from_response(response(418, {"error": {"code": "teapot", "message": "m"}}))
    assert type(e) is errors.ClientError
    e = errors.from_response(response(502, None))
    assert type(e) is errors.ServerError and e.code == "http_502"
    # A known code under an unexpected status is typed by the status.
    e = errors.from_response(response(503, {"error": {"code": "queue_full", "message": "m"}}))
    assert type(e) is errors.ServiceUnavailable


def test_decode_reads_a_job_and_ignores_fields_added_later() -> None:
    job = decode(Job, JOB)
    assert job.status is JobStatus.RUNNING and not job.terminal
    assert job.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert job.progress == Progress(1, 2) and job.params.steps == 2 and job.params.cfg_scale is None
    with pytest.raises(ValueError, match="status"):
        decode(Job, JOB | {"status": "exploded"})
    with pytest.raises(ValueError, match="null"):
        decode(Job, JOB | {"id": None})


def test_options_leave_unset_fields_to_the_server() -> None:
    assert SynthesisOptions(steps=2, seed=7).form() == {"steps": "2", "seed": "7", "output": "wav"}


def test_event_parser_and_job_updates() -> None:
    stream = [
        ": keep-alive",
        "id: 1",
        "event: status",
        'data: {"status": "running"}',
        "",
        "id: 2",
        "event: progress",
        'data: {"progress": {"step": 2,',
        'data: "total": 2}}',
        "",
        "retry: 1000",
        "",
        "id: 3",
        "data: " + '{"status": "succeeded"}',
        "",
    ]
    parser = EventParser()
    events = [e for line in stream if (e := parser.feed(line)) is not None]
    assert [(e.id, e.event) for e in events] == [("1", "status"), ("2", "progress"), ("3", "message")]
    assert parser.last_id == "3"
    job = decode(Job, JOB | {"status": "queued", "progress": None})
    seen = []
    for e in events:
        job = apply_event(job, e)
        seen.append((job.status.value, job.progress))
    assert seen == [("running", None), ("running", Progress(2, 2)), ("succeeded", Progress(2, 2))]
    # A whole job in an event replaces the state.
    whole = apply_event(job, ServerEvent(data=json.dumps(JOB)))
    assert whole.status is JobStatus.RUNNING
    ended = JOB | {"status": "succeeded", "urls": {"job": "/j", "audio": "/j/audio"}}
    final = apply_event(whole, ServerEvent("status", json.dumps({"status": "succeeded", "job": ended})))
    assert final.status is JobStatus.SUCCEEDED and final.urls.audio == "/j/audio"


def test_a_server_without_an_event_stream_is_told_apart_from_a_missing_job() -> None:
    no_route = response(404, {"error": {"code": "not_found", "message": "Not Found"}})
    no_job = response(404, {"error": {"code": "job_not_found", "message": "no job"}})
    assert events_unsupported(no_route) and not events_unsupported(no_job)
    assert events_unsupported(response(200, {"status": "running"}))  # JSON, not a stream
