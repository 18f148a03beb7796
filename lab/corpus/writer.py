"""Writing and reading an utterance: mp4 (H.264 video + AAC audio) and its transcript JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from diffv2s.audio import read_media_audio

_AAC_FRAME = 1024


@dataclass
class AVClip:
    """frames: [T, H, W, 3] uint8 RGB; audio: [N] float32 mono."""

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    fps: float


def write_mp4(
    path: Path, frames: np.ndarray, audio: np.ndarray, sample_rate: int, fps: int = 25, crf: int = 20
) -> None:
    """frames: [T, H, W, 3] uint8 RGB (H, W even); audio: [N] float32 in [-1, 1], mono.

    One encoder thread each, so the same input gives the same file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height = int(frames.shape[2]), int(frames.shape[1])
        vs.pix_fmt = "yuv420p"
        # mb-tree rate control makes x264 give different bits for the same frames from one encode to the
        # next in a process; without it the file is a function of its input.
        vs.options = {"crf": str(crf), "preset": "medium", "x264-params": "no-mbtree=1"}
        vs.codec_context.thread_count = 1
        vs.codec_context.time_base = Fraction(1, fps)
        aus = container.add_stream("aac", rate=sample_rate, layout="mono")
        aus.options = {"b": "96k"}
        aus.codec_context.thread_count = 1
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        samples = np.clip(audio, -1.0, 1.0).astype(np.float32)
        for k, start in enumerate(range(0, len(samples), _AAC_FRAME)):
            chunk = samples[start : start + _AAC_FRAME]
            aframe = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            aframe.sample_rate = sample_rate
            aframe.pts = k * _AAC_FRAME
            aframe.time_base = Fraction(1, sample_rate)
            container.mux(aus.encode(aframe))
        container.mux(aus.encode(None))
    tmp.replace(path)


def read_mp4(path: Path, video: bool = True, audio: bool = True) -> AVClip:
    """-> AVClip with frames as RGB and the audio downmixed to mono float32 (decoder delay removed)."""
    frames: list[np.ndarray] = []
    wav = np.zeros(0, np.float32)
    sample_rate = 0
    fps = 0.0
    with av.open(str(path)) as container:
        has_audio = bool(container.streams.audio)
        if video and container.streams.video:
            vs = container.streams.video[0]
            fps = float(vs.average_rate or 0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(vs)]
    if audio and has_audio:
        wav, sample_rate = read_media_audio(path)
    return AVClip(
        frames=np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8),
        audio=wav,
        sample_rate=sample_rate,
        fps=fps,
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.json")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
