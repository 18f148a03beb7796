"""End to end: a cancel that arrives while a real worker holds the job and reads its video.

Before the `preparing` state existed, a job stayed `queued` while the worker decoded it, so a cancel in
that window deleted the input under the worker. The worker here waits a few seconds after claiming a
job (the test hook DIFFV2S_TEST_HOLD_PREPARED_S), which makes the window wide enough to hit every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from diffv2s.checkpoints.store import load_checkpoint

pytestmark = [pytest.mark.e2e]

HOLD_S = 3.0


@pytest.fixture(scope="module")
def holding_cluster(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    env = {"DIFFV2S_TEST_HOLD_PREPARED_S": str(HOLD_S), "DIFFV2S_MAX_BATCH_SIZE": "2"}
    root = tmp_path_factory.mktemp("cancel")
    with cluster_tools.launch(redis_base, checkpoint, root, 1, env) as c:
        yield c


def _submit(client: httpx.Client, clip: Path) -> dict[str, Any]:
    r = client.post(
        "/v1/synthesize", files={"video": (clip.name, clip.read_bytes(), "video/mp4")}, data={"steps": "2"}
    )
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_cancel_while_the_worker_prepares_ends_canceled_with_no_error_and_no_file_left_and_the_next_job_reports_its_settings(
    holding_cluster: Any, cluster_tools: Any, clips: list[Path], checkpoint: Path | None
) -> None:
    c = holding_cluster
    wait_until = cluster_tools.wait_until
    headers = {"Authorization": f"Bearer {c.key_a}"}
    with httpx.Client(base_url=c.url, headers=headers, timeout=30) as client:
        job = _submit(client, clips[0])
        job_id = job["id"]
        input_key = c.store.get(job_id).input_key  # type: ignore[union-attr]
        wait_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "preparing",
            30,
            "the worker to claim the job",
            [c.gateway, *c.workers],
        )
        assert client.get(f"/v1/jobs/{job_id}").json()["urls"]["cancel"] == f"/v1/jobs/{job_id}/cancel"

        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "canceled"
        # The worker still reads the video: the gateway left the input where it was.
        assert (c.storage / input_key).is_file()

        # The worker finishes reading, sees the cancel before the model runs, and cleans up.
        wait_until(
            lambda: not (c.storage / input_key).exists(), 60, "the worker to remove the input", c.workers
        )
        final = client.get(f"/v1/jobs/{job_id}").json()
        assert final["status"] == "canceled"
        assert final["error"] is None and final["started_at"] is None
        assert client.get(f"/v1/jobs/{job_id}/audio").status_code == 409

        # The same worker goes on serving: a job submitted next succeeds.
        nxt = _submit(client, clips[1])["id"]
        deadline = time.monotonic() + 180
        while (done := client.get(f"/v1/jobs/{nxt}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline, c.logs()
            assert done["status"] not in ("failed", "canceled"), c.logs()
            time.sleep(0.5)

    # The job names the settings it really ran with: what it asked for, the checkpoint's defaults for
    # what it left unset (read here from the checkpoint file itself).
    d = load_checkpoint(checkpoint).config.diffusion
    assert done["params"] == {
        "sampler": None,
        "steps": 2,
        "seed": 0,
        "guidance": 0.0,
        "cfg_scale": None,
        "noise_scale": None,
    }
    assert done["sampling"] == {
        "sampler": d.default_sampler,
        "steps": 2,
        "seed": 0,
        "guidance": 0.0,
        "cfg_scale": d.default_cfg_scale,
        "noise_scale": d.default_noise_scale,
    }

    logs = c.workers[0].tail(400)
    assert f"job {job_id}: canceled" in logs, logs
    assert "Traceback" not in logs and " ERROR" not in logs, logs
    assert not any(f.startswith("inputs/") for f in _files(c.storage)), _files(c.storage)
    assert not any(job_id in f for f in _files(c.storage)), _files(c.storage)
