"""Muxing: the original picture plus the new speech as AAC, audio length equal to the video's."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from diffv2s.config import VideoConfig
from diffv2s.errors import MuxFailed, NoVideoStream
from diffv2s.video.decode import decode_video
from diffv2s.video.mux import mux_audio
from tests.fixtures.videos import (
    carphone_path,
    read_rgb_frames,
    rotate_mp4_display,
    transcode,
    write_audio_only_mp4,
    write_video,
)

SR = 22050


def _sine(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _streams(path: Path) -> tuple[dict[str, float], dict[str, str], np.ndarray, int]:
    """Durations and codecs per stream type, the decoded audio and the number of video frames."""
    with av.open(str(path)) as c:
        durations = {s.type: float(s.duration * s.time_base) for s in c.streams}
        codecs = {s.type: s.codec_context.name for s in c.streams}
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    with av.open(str(path)) as c:
        n_video = sum(1 for _ in c.decode(video=0))
    return durations, codecs, audio, n_video


def _peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / SR)[spectrum.argmax()])


@pytest.mark.parametrize("seconds", [4.004, 2.0, 6.0])
def test_mux_sine_into_carphone(tmp_path: Path, seconds: float) -> None:
    # Exact, too short (padded) and too long (cut) speech all end up as long as the video.
    out = mux_audio(carphone_path(), _sine(seconds), SR, tmp_path / "out" / "dubbed.mp4")
    assert out.is_file() and not out.with_name("dubbed.mp4.part").exists()
    durations, codecs, audio, n_video = _streams(out)
    assert codecs == {"video": "h264", "audio": "aac"}
    assert durations["audio"] == pytest.approx(durations["video"], rel=0.01)
    assert durations["video"] == pytest.approx(4.004, rel=0.01)
    assert n_video == 120
    assert _peak_hz(audio[: int(1.5 * SR)]) == pytest.approx(440, abs=5)
    if seconds < 4:
        assert np.abs(audio[int(2.3 * SR) : int(3.9 * SR)]).max() < 0.02  # zero padding after the speech
    # The picture is the original one, untouched (h264 packets are copied).
    assert np.array_equal(read_rgb_frames(out)[60], read_rgb_frames(carphone_path())[60])


def test_mux_output_streams_well(tmp_path: Path) -> None:
    # Index before the media data and audio chunks spread through the file: playable while downloading.
    out = mux_audio(carphone_path(), _sine(4.004), SR, tmp_path / "dubbed.mp4")
    data = out.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    with av.open(str(out)) as c:
        pos = {"video": [], "audio": []}
        for packet in c.demux():
            if packet.pos is not None and packet.pos >= 0:
                pos[packet.stream.type].append(packet.pos)
    assert min(pos["audio"]) < max(pos["video"]) and min(pos["video"]) < max(pos["audio"])
    assert min(pos["audio"]) < np.median(pos["video"])


def test_mux_reencodes_other_codecs_to_h264(tmp_path: Path) -> None:
    avi = transcode(carphone_path(), tmp_path / "carphone.avi", "mpeg4")
    out = mux_audio(avi, _sine(4.0, 300.0), SR, tmp_path / "dubbed.mp4")
    durations, codecs, audio, n_video = _streams(out)
    assert codecs == {"video": "h264", "audio": "aac"}
    assert n_video == 120
    assert durations["audio"] == pytest.approx(durations["video"], rel=0.01)
    assert _peak_hz(audio[: 2 * SR]) == pytest.approx(300, abs=5)


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_mux_keeps_a_portrait_video_upright(tmp_path: Path, codec: str) -> None:
    # h264 keeps its display rotation (packets copied); other codecs get their pixels turned.
    src = carphone_path() if codec == "h264" else transcode(carphone_path(), tmp_path / "m4.mp4", "mpeg4")
    portrait = rotate_mp4_display(src, tmp_path / "portrait.mp4")
    out = mux_audio(portrait, _sine(4.0), SR, tmp_path / "dubbed.mp4")
    before = decode_video(portrait, VideoConfig())
    after = decode_video(out, VideoConfig())
    assert after.frames.shape == before.frames.shape == (100, 176, 144, 3)
    assert np.abs(after.frames.astype(np.int16) - before.frames).mean() < 4


def test_mux_needs_a_video_track(tmp_path: Path) -> None:
    audio_only = write_audio_only_mp4(tmp_path / "a.mp4")
    with pytest.raises(NoVideoStream):
        mux_audio(audio_only, _sine(1.0), SR, tmp_path / "out.mp4")


@pytest.mark.parametrize("size", [(175, 143), (176, 143), (175, 144)])
def test_mux_pads_odd_dimensions_for_h264(tmp_path: Path, size: tuple[int, int]) -> None:
    # libx264 in 4:2:0 refuses an odd width or height: the last column / row is repeated instead.
    w, h = size
    frames = [f[:h, :w] for f in read_rgb_frames(carphone_path())[:25]]
    odd = write_video(tmp_path / "odd.avi", frames, fps=25.0, codec="mpeg4")
    out = mux_audio(odd, _sine(1.0), SR, tmp_path / "dubbed.mp4")
    _, codecs, _, n_video = _streams(out)
    assert codecs == {"video": "h264", "audio": "aac"} and n_video == 25
    after = read_rgb_frames(out)
    assert after[0].shape == (h + h % 2, w + w % 2, 3)
    before = read_rgb_frames(odd)
    picture = np.stack([a[:h, :w] for a in after]).astype(np.int16)
    assert np.abs(picture - np.stack(before)).mean() < 4
    # The padding repeats the edge pixels.
    last = after[10][:h, :w].astype(np.int16)
    assert np.abs(after[10][h + h % 2 - 1, :w].astype(np.int16) - last[h - 1]).mean() < 6
    assert np.abs(after[10][:h, w + w % 2 - 1].astype(np.int16) - last[:, w - 1]).mean() < 6


def test_mux_failure_is_a_typed_error_and_leaves_no_part_file(tmp_path: Path) -> None:
    # An output folder that cannot be made (its parent is a file): a typed error, nothing half-written.
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"x")
    with pytest.raises(MuxFailed) as info:
        mux_audio(carphone_path(), _sine(1.0), SR, blocker / "dubbed.mp4")
    assert info.value.code == "mux_failed" and "could not be written" in info.value.message
    assert list(tmp_path.iterdir()) == [blocker]
