"""`torchrun --nproc-per-node 2` (gloo on CPU) trains stage C of the tiny paper-path run with
DistributedDataParallel: its losses equal the one-process run's with the same global batch, and a run
stopped with 2 processes resumes with 1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.training.cli import train_main
from lab.training.loop import stage_record

# Float sums over 2 processes differ from 1 process's only in rounding order.
LOSS_TOLERANCE = 1e-4


def _fresh_denoiser(paper_run: Path, dest: Path) -> Path:
    """A copy of the finished run with stage C and the export undone."""
    shutil.copytree(paper_run, dest)
    shutil.rmtree(dest / "denoiser")
    (dest / "diffv2s-paper.pt").unlink()
    info = json.loads((dest / "run.json").read_text())
    info.pop("export", None)
    (dest / "run.json").write_text(json.dumps(info))
    return dest


def _torchrun(out: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "lab.training.cli", "--out", str(out), "--resume", "--stage", "denoiser", "--threads", "1",
        "--denoiser-batch", "2", "--log-every-s", "0", "--no-progress", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_processes_match_one_with_the_same_global_batch(paper_run: Path, tmp_path: Path) -> None:
    run = _fresh_denoiser(paper_run, tmp_path / "ddp")
    copied_log = len((run / "train.log").read_text())
    proc = _torchrun(run, "--denoiser-steps", "3")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-3000:]
    one = stage_record(paper_run / "denoiser" / "state.pt")
    two = stage_record(run / "denoiser" / "state.pt")
    assert one is not None and two is not None and two.step == 3 and two.done
    for key in ("l1", "prior_l1"):
        for a, b in zip(one.train[key][:3], two.train[key], strict=True):
            assert abs(a - b) <= LOSS_TOLERANCE * max(1.0, abs(a)), (key, one.train[key], two.train[key])
    log = (run / "train.log").read_text()[copied_log:]
    assert "2 x cpu" in log and log.count("[denoiser] done") == 1  # rank 0 alone logs


def test_a_two_process_run_resumes_with_one(paper_run: Path, tmp_path: Path) -> None:
    run = _fresh_denoiser(paper_run, tmp_path / "resume")
    steps = 40
    proc = _torchrun(run, "--denoiser-steps", str(steps), "--save-every-min", "0")
    state = run / "denoiser" / "state.pt"
    deadline = time.monotonic() + 180
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the 2-process run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    stopped = stage_record(state)
    assert stopped is not None and 0 < stopped.step < steps and not stopped.done
    assert train_main(["--out", str(run), "--resume", "--threads", "1", "--no-progress"]) == 0
    resumed = stage_record(state)
    assert resumed is not None and resumed.done and resumed.step == steps
    assert f"[denoiser] resumed at step {stopped.step} " in (run / "train.log").read_text()
    assert (run / "diffv2s-paper.pt").exists()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
