"""Decoding: 25 fps resampling by timestamps, downscaling, containers, and a typed error per bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffv2s.config import VideoConfig
from diffv2s.errors import (
    CorruptVideo,
    EmptyFile,
    NoVideoStream,
    UnsupportedVideo,
    VideoTooLong,
    VideoTooShort,
)
from diffv2s.video.decode import VideoReader, decode_video, probe_video
from tests.fixtures.videos import (
    carphone_path,
    flat_frames,
    grace_hopper_rgb,
    read_rgb_frames,
    remux,
    rotate_mp4_display,
    transcode,
    write_audio_only_mp4,
    write_video,
)

CFG = VideoConfig()


def _source_index(frames: np.ndarray, step: int) -> np.ndarray:
    """Which source frame each output frame shows: source frame i was painted with level i * step."""
    return np.round(frames.reshape(len(frames), -1).mean(1) / step).astype(int)


def test_carphone_decodes_at_25_fps() -> None:
    video = decode_video(carphone_path(), CFG)
    # 120 frames at 30000/1001 fps last 4.004 s -> round(4.004 * 25) = 100 frames at 25 fps.
    assert video.frames.shape == (100, 144, 176, 3)
    assert video.frames.dtype == np.uint8
    assert video.duration == pytest.approx(4.004, abs=1e-3)
    assert video.source_fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert (video.width, video.height) == (176, 144)
    assert not video.has_audio
    # Output frame k is the source frame nearest to k / 25 s.
    source = read_rgb_frames(carphone_path())
    for k in (0, 37, 99):
        nearest = int(np.round(k / 25 * 30000 / 1001 - 1e-9))
        assert np.array_equal(video.frames[k], source[nearest])


@pytest.mark.parametrize("fps", [30.0, 12.0])
def test_constant_rate_is_resampled_by_timestamp(tmp_path: Path, fps: float) -> None:
    n = int(2 * fps)
    step = 4 if n <= 60 else 2
    path = write_video(tmp_path / f"flat{int(fps)}.mp4", flat_frames([i * step for i in range(n)]), fps=fps)
    video = decode_video(path, CFG)
    assert video.duration == pytest.approx(2.0, abs=1e-3)
    assert abs(video.n_frames - 2.0 * 25) <= 1
    expected = [min(n - 1, int(np.floor(k / 25 * fps + 0.5 - 1e-9))) for k in range(video.n_frames)]
    assert _source_index(video.frames, step).tolist() == expected


def test_variable_frame_rate_picks_the_nearest_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gaps = rng.choice([0.02, 0.033, 0.05, 0.1], size=40)
    times = np.concatenate([[0.0], np.cumsum(gaps)[:-1]]).round(3)
    path = write_video(tmp_path / "vfr.mp4", flat_frames([i * 5 for i in range(40)]), times=list(times))
    video = decode_video(path, CFG)
    end = times[-1] + (times[-1] - times[-2])  # the last frame lasts as long as the gap before it
    assert abs(video.n_frames - end * 25) <= 1
    got = _source_index(video.frames, 5)
    for k, idx in enumerate(got):
        tick = k / 25
        # The chosen frame is (one of) the nearest to the tick, never a later-than-nearest one.
        best = np.min(np.abs(times - tick))
        assert abs(times[idx] - tick) <= best + 1e-6, (k, idx)


def test_large_frames_are_downscaled(tmp_path: Path) -> None:
    frames = [np.full((720, 1280, 3), 90, np.uint8) for _ in range(15)]
    video = decode_video(write_video(tmp_path / "hd.mp4", frames, fps=25), CFG)
    assert video.frames.shape == (15, 360, 640, 3)
    assert (video.width, video.height) == (1280, 720)


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mkv", None), (".mov", None), (".webm", "libvpx"), (".avi", "mpeg4")],
)
def test_other_containers_decode_like_the_mp4(tmp_path: Path, suffix: str, codec: str | None) -> None:
    dst = tmp_path / f"carphone{suffix}"
    if codec is None:
        remux(carphone_path(), dst)
    else:
        transcode(carphone_path(), dst, codec)
    reference = decode_video(carphone_path(), CFG)
    video = decode_video(dst, CFG)
    assert abs(video.n_frames - reference.n_frames) <= 1
    n = min(video.n_frames, reference.n_frames)
    diff = np.abs(video.frames[:n].astype(np.int16) - reference.frames[:n].astype(np.int16)).mean()
    assert diff < (1 if codec is None else 12), diff  # remux is bit-exact; re-encodes are lossy
    assert probe_video(dst).has_video


def test_portrait_phone_video_is_turned_upright(tmp_path: Path) -> None:
    path = rotate_mp4_display(carphone_path(), tmp_path / "portrait.mp4")
    reference = decode_video(carphone_path(), CFG)
    video = decode_video(path, CFG)
    assert video.frames.shape == (100, 176, 144, 3)
    assert np.array_equal(video.frames[10], np.rot90(reference.frames[10], k=-1))  # turned clockwise


def test_probe_reads_the_header_only() -> None:
    probe = probe_video(carphone_path())
    assert probe.has_video and not probe.has_audio
    assert probe.duration == pytest.approx(4.004, abs=1e-3)
    assert (probe.width, probe.height, probe.codec) == (176, 144, "h264")
    assert "mp4" in probe.format_name


def test_decode_module_does_not_import_torch_or_mediapipe() -> None:
    code = (
        "import sys; import diffv2s.video.decode; "
        "bad = [m for m in ('torch', 'mediapipe', 'cv2') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bad inputs: each gets its typed error and a message that says what to do ------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(EmptyFile, match="empty"):
        decode_video(path, CFG)
    with pytest.raises(EmptyFile):
        probe_video(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(UnsupportedVideo, match="Send an mp4, mov, mkv, webm or avi"):
        decode_video(path, CFG)


@pytest.mark.parametrize(("ext", "name"), [(".png", "PNG"), (".jpg", "JPEG")])
def test_still_images_are_rejected(tmp_path: Path, ext: str, name: str) -> None:
    path = tmp_path / f"face{ext}"
    ok, data = cv2.imencode(ext, cv2.cvtColor(grace_hopper_rgb(), cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(data.tobytes())
    with pytest.raises(UnsupportedVideo, match=f"detected {name} image"):
        probe_video(path)
    with pytest.raises(UnsupportedVideo):
        decode_video(path, CFG)
    # Also when the name lies about the content.
    disguised = tmp_path / "face.mp4"
    disguised.write_bytes(data.tobytes())
    with pytest.raises(UnsupportedVideo, match=name):
        decode_video(disguised, CFG)


def test_animated_gif_is_not_accepted(tmp_path: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(f) for f in flat_frames([0, 80, 160, 240])]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)
    with pytest.raises(UnsupportedVideo, match="GIF"):
        decode_video(path, CFG)


def test_audio_only_mp4(tmp_path: Path) -> None:
    path = write_audio_only_mp4(tmp_path / "speech.mp4")
    probe = probe_video(path)
    assert not probe.has_video and probe.has_audio
    with pytest.raises(NoVideoStream, match="no video track"):
        decode_video(path, CFG)


def test_truncated_mp4(tmp_path: Path) -> None:
    data = carphone_path().read_bytes()  # the carphone file keeps its index (moov) at the end
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptVideo, match="truncated"):
        decode_video(path, CFG)
    with pytest.raises(CorruptVideo):
        probe_video(path)


def test_truncated_mp4_with_index_first(tmp_path: Path) -> None:
    # A "faststart" mp4 cut in half still opens: its header promises 4 s but only ~2 s of data remain.
    full = remux(carphone_path(), tmp_path / "fast.mp4", faststart=True)
    data = full.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    path = tmp_path / "fast_half.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptVideo, match="truncated"):
        decode_video(path, CFG)


def test_too_short(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", flat_frames([100] * 7), fps=25)  # 0.28 s
    with pytest.raises(VideoTooShort, match="at least 0.5 s"):
        decode_video(path, CFG)


def test_too_long_is_refused_from_the_header() -> None:
    cfg = VideoConfig(max_seconds=1.0)
    # The reader's constructor reads only the header, so this proves nothing was decoded.
    with pytest.raises(VideoTooLong, match="limit is 1 s"):
        VideoReader(carphone_path(), cfg)
    with pytest.raises(VideoTooLong):
        probe_video(carphone_path()).check(cfg)
    with pytest.raises(VideoTooLong):
        decode_video(carphone_path(), cfg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedVideo, match="does not exist"):
        decode_video(tmp_path / "nope.mp4", CFG)
