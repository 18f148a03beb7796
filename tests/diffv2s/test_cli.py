"""`diffv2s` CLI: synthesize the real carphone clip; bad inputs exit non-zero without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.videos import carphone_path, write_audio_only_mp4, write_video

CLI = [sys.executable, "-m", "diffv2s.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_synthesize_carphone_writes_wav_of_the_video_duration(tmp_path) -> None:
    out = tmp_path / "out.wav"
    proc = run_cli("synthesize", carphone_path(), "-o", out, "--steps", "3", "--seed", "7", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    wav, sr = sf.read(out)
    with av.open(str(carphone_path())) as c:
        stream = c.streams.video[0]
        video_seconds = float(stream.frames / stream.average_rate)
    assert sr == 22050
    assert abs(len(wav) / sr - video_seconds) <= 0.01 * video_seconds
    assert summary["audio_seconds"] == pytest.approx(len(wav) / sr, abs=1e-3)
    from diffv2s.checkpoints.store import load_checkpoint

    # The README promise: an untrained checkpoint says plainly that its output is not speech yet.
    trained = bool(load_checkpoint().meta.get("trained"))
    assert ("untrained" in proc.stderr) is not trained


def _png(path):
    import cv2

    cv2.imwrite(str(path), np.full((64, 64, 3), 128, np.uint8))
    return path


def _truncated(path):
    data = carphone_path().read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noface(path):
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(120, 30, (96, 128, 3)), 0, 255).astype(np.uint8) for _ in range(50)]
    return write_video(path, frames, fps=25)


def _short(path):
    with av.open(str(carphone_path())) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), c.decode(video=0), strict=False)]
    return write_video(path, frames, fps=25)


BAD = {
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "empty_file"),
    "random": (lambda p: (p.write_bytes(np.random.default_rng(1).bytes(4096)), p)[1], "unsupported_video"),
    "png": (_png, "unsupported_video"),
    "audio_only": (lambda p: write_audio_only_mp4(p), "no_video_stream"),
    "truncated": (_truncated, "corrupt_video"),
    "no_face": (_noface, "no_face_found"),
    "short": (_short, "video_too_short"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_nonzero_with_a_message(tmp_path, case: str) -> None:
    make, code = BAD[case]
    src = make(tmp_path / ("in.png" if case == "png" else "in.mp4"))
    proc = run_cli("synthesize", src, "-o", tmp_path / "o.wav", "--steps", "2")
    assert proc.returncode == 2, proc.stderr
    assert f"[{code}]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.wav").exists()


def test_too_long_video_is_refused_by_the_library_limit(tmp_path) -> None:
    from diffv2s.config import VideoConfig
    from diffv2s.errors import VideoTooLong
    from diffv2s.video.mouth_roi import extract_mouth_roi

    with pytest.raises(VideoTooLong) as err:
        extract_mouth_roi(carphone_path(), VideoConfig(max_seconds=1.0))
    assert "1" in err.value.message


def test_bad_parameters_exit_nonzero(tmp_path) -> None:
    proc = run_cli("synthesize", carphone_path(), "-o", tmp_path / "o.wav", "--steps", "0")
    assert proc.returncode == 2 and "[invalid_parameter]" in proc.stderr and "Traceback" not in proc.stderr


def test_info_prints_the_checkpoint() -> None:
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (
        info["preset"] == "small" and isinstance(info["meta"]["trained"], bool) and len(info["sha256"]) == 64
    )
    assert info["parameters"] > 1_000_000
