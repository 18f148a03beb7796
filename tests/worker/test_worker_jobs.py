"""Worker-side job handling that needs no model: WAV output, redelivery rules, retention, Celery config."""

from __future__ import annotations

import io
import time
import uuid
import wave

import numpy as np
import pytest

from jobs import JobRecord, JobStatus, lifecycle
from jobs.redis_store import RedisJobStore
from jobs.storage import LocalStorage, audio_key, input_key, video_key
from worker import metrics
from worker.celery_app import app
from worker.model import ModelRuntime, expire_results
from worker.settings import WorkerSettings
from worker.tasks import run_job, write_wav


def job(status: JobStatus = JobStatus.QUEUED, **kw: object) -> JobRecord:
    job_id = str(uuid.uuid4())
    fields: dict[str, object] = {
        "owner": "o",
        "created_at": time.time(),
        "params": {"sampler": "dpmpp", "steps": 4, "seed": 0, "guidance": 0.0, "cfg_scale": 1.0},
        "output": "wav",
        "input_key": input_key(job_id, ".mp4"),
    }
    return JobRecord(id=job_id, status=status, **(fields | kw))  # type: ignore[arg-type]


@pytest.fixture
def runtime(store: RedisJobStore, storage: LocalStorage) -> ModelRuntime:
    # No model is loaded: these paths decide before anything reaches the batcher.
    return ModelRuntime(WorkerSettings(), store, storage)


def test_wav_is_16_bit_pcm_of_the_waveform(storage: LocalStorage) -> None:
    sr = 22050
    t = np.arange(sr // 2) / sr
    wav = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    wav[10] = 3.0  # out of range: clipped, not wrapped
    write_wav(storage, "results/a.wav", wav, sr)
    with wave.open(io.BytesIO(storage.local_path("results/a.wav").read_bytes())) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, sr, len(wav))
        pcm = np.frombuffer(w.readframes(len(wav)), dtype="<i2")
    assert pcm[10] == 32767
    back = pcm.astype(np.float32) / 32767
    assert np.abs(np.delete(back - wav, 10)).max() < 1e-4
    assert list((storage.root / "tmp").iterdir()) == []


def test_finished_jobs_are_skipped_on_redelivery(
    runtime: ModelRuntime, store: RedisJobStore, storage: LocalStorage
) -> None:
    done = job(JobStatus.SUCCEEDED, audio_key="results/x.wav")
    store.create(done, 60)
    with storage.writer(audio_key(done.id)) as f:
        f.write(b"the first result")
    assert run_job(runtime, done.id) == "skipped:succeeded"
    assert storage.local_path(audio_key(done.id)).read_bytes() == b"the first result"
    assert store.get(done.id) == done

    canceled = job(JobStatus.CANCELED)
    store.create(canceled, 60)
    before = metrics.JOBS_FINISHED.labels("canceled")._value.get()
    assert run_job(runtime, canceled.id) == "skipped:canceled"
    assert metrics.JOBS_FINISHED.labels("canceled")._value.get() == before + 1
    assert run_job(runtime, str(uuid.uuid4())) == "missing"


def test_a_job_that_keeps_killing_workers_fails_instead_of_looping(
    runtime: ModelRuntime, store: RedisJobStore, storage: LocalStorage
) -> None:
    stuck = job(JobStatus.RUNNING, attempts=WorkerSettings().max_attempts - 1, worker="gone:1")
    store.create(stuck, 60)
    with storage.writer(stuck.input_key) as f:
        f.write(b"video")
    assert run_job(runtime, stuck.id) == "failed"
    record = store.get(stuck.id)
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error is not None and record.error["code"] == "worker_lost"
    assert not storage.exists(stuck.input_key)


def test_janitor_expires_results_and_keeps_the_record(store: RedisJobStore, storage: LocalStorage) -> None:
    settings = WorkerSettings(result_ttl_s=60)
    now = time.time()
    old = job(JobStatus.RUNNING, output="mp4")
    fresh = job(JobStatus.RUNNING)
    for j in (old, fresh):
        store.create(j, 60)
        for key in (audio_key(j.id), video_key(j.id)):
            with storage.writer(key) as f:
                f.write(b"result")
        store.compare_and_set(
            j.id,
            {JobStatus.RUNNING},
            {
                "status": JobStatus.SUCCEEDED,
                "audio_key": audio_key(j.id),
                "video_key": video_key(j.id),
                "finished_at": now,
                "expires_at": now - 1 if j is old else now + 60,
            },
        )
    assert expire_results(store, storage, settings) == 1
    assert store.get(old.id).status == JobStatus.EXPIRED  # type: ignore[union-attr]
    assert not storage.exists(audio_key(old.id)) and not storage.exists(video_key(old.id))
    assert store.get(fresh.id).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]
    assert storage.exists(audio_key(fresh.id))
    assert expire_results(store, storage, settings) == 0


def test_celery_settings_follow_the_design() -> None:
    c = app.conf
    assert c.worker_prefetch_multiplier == 1
    assert c.task_acks_late is True
    assert c.task_reject_on_worker_lost is True
    assert c.worker_pool == "threads"
    s = WorkerSettings()
    assert c.worker_concurrency >= s.max_batch_size
    assert c.task_time_limit < c.broker_transport_options["visibility_timeout"]
    assert c.task_soft_time_limit < c.task_time_limit
    task = app.tasks["diffv2s.synthesize"]
    assert task.acks_late and task.reject_on_worker_lost and task.ignore_result


def test_an_unknown_engine_name_is_refused_at_start_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="DIFFV2S_ENGINE must be one of torch, onnxruntime"):
        WorkerSettings(engine="tensorrtx")
    assert WorkerSettings(engine="onnxruntime-cpu-int8").engine == "onnxruntime-cpu-int8"


def test_the_prepare_hold_test_hook_is_refused_in_prod() -> None:
    with pytest.raises(ValueError, match="test hook"):
        WorkerSettings(
            environment="prod",
            test_hold_prepared_s=1.0,
            store_url="redis://127.0.0.1:6379/1",
            broker_url="redis://127.0.0.1:6379/0",
        )


def test_a_duplicate_message_for_a_job_this_worker_runs_leaves_it_listed_in_the_heartbeat(
    runtime: ModelRuntime, store: RedisJobStore
) -> None:
    held = job(JobStatus.QUEUED)
    store.create(held, 60)
    runtime.hold(held.id)  # the task thread that runs the job
    claimed = lifecycle.claim(store, held.id, runtime.worker_id)
    assert claimed is not None
    runtime.set_lease(held.id, claimed.lease)
    assert run_job(runtime, held.id) == "skipped:held"  # a second message for it, in another thread
    assert runtime.held_ids() == [held.id] and runtime.lease_of(held.id) == claimed.lease
    runtime.release(held.id)
    assert runtime.held_ids() == []


def test_a_message_for_a_job_another_live_worker_holds_is_skipped(
    runtime: ModelRuntime, store: RedisJobStore
) -> None:
    held = job(JobStatus.QUEUED)
    store.create(held, 60)
    claimed = lifecycle.claim(store, held.id, "other:1")
    assert claimed is not None
    store.heartbeat("other:1", {"id": "other:1", "jobs": [held.id], "beat_at": time.time()}, 30)
    assert run_job(runtime, held.id) == "skipped:held"
    assert store.get(held.id) == claimed
