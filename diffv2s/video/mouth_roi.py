"""Mouth regions of interest, prepared the way AV-HuBERT's training data was (its `align_mouth.py`).

Per video: landmarks on every 25 fps frame -> fill missed frames by linear interpolation (the first and
last detections are copied outwards) -> smooth the landmarks over a 12-frame window -> per frame, a
least-squares similarity transform from the smoothed stable points (nose bottom 33, eye corners 36, 39,
42, 45) to the mean face in a 256 x 256 frame -> a 96 x 96 grayscale crop centred on the mouth
(mean of points 48-67 of the frame's own landmarks, kept inside the 256 frame) -> centre crop 88 x 88
-> (x / 255 - 0.421) / 0.165.

The smoothing window starts at the frame and looks 12 frames ahead, the last 11 frames reuse the last
full window: this is what the recipe's `crop_patch` does, so our crops match the training data.
The warp maps the frame straight into the crop (the 256 x 256 warp followed by the crop, composed into
one affine transform), which computes the same pixels at a fraction of the cost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from diffv2s.config import VideoConfig
from diffv2s.errors import NoFaceFound
from diffv2s.video.decode import DEFAULT_LIMITS, VideoLimits, VideoReader
from diffv2s.video.landmarks import FaceLandmarks, default_detector
from diffv2s.video.mean_face import MEAN_FACE_256, apply, similarity

STABLE_POINTS = (33, 36, 39, 42, 45)
MOUTH = slice(48, 68)
REFERENCE_SIZE = 256
SMOOTH_WINDOW = 12
# Frames the decoder may run ahead of the landmark detector (`decode_ahead`): ~75 KB each at 176 x 144.
DECODE_AHEAD = 8


class LandmarkDetector(Protocol):
    def detect_video(self, frames: Iterator[np.ndarray]) -> FaceLandmarks: ...


@dataclass
class MouthROI:
    """Normalised mouth crops of a video at 25 fps.

    frames: float32 [T, 88, 88], (gray / 255 - mean) / std.
    face_ratio: share of frames where a face was detected (the others were interpolated).
    transforms: float64 [T, 2, 3], maps frame pixels (x, y) to pixels of the 88 x 88 crop.
    landmarks: float32 [T, 68, 2], interpolated (not smoothed) landmarks in frame pixels.
    """

    frames: np.ndarray
    face_ratio: float
    fps: float
    duration: float
    n_frames: int
    transforms: np.ndarray
    landmarks: np.ndarray


def interpolate_missing(points: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Fill frames without a face: linear between detections, nearest detection at both ends.

    points: [T, 68, 2] (rows where `detected` is False are ignored); detected: bool [T], at least one True.
    """
    t = np.arange(len(points))
    known = np.flatnonzero(detected)
    flat = points.reshape(len(points), -1).astype(np.float64)
    filled = np.empty_like(flat)
    for j in range(flat.shape[1]):
        # np.interp holds the edge values outside the known range: the recipe's copy-nearest.
        filled[:, j] = np.interp(t, known, flat[known, j])
    return filled.reshape(points.shape)


def smooth_forward(points: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Mean over frames [s, s + w) with s = min(t, T - w) and w = min(window, T): [T, ...] like `points`."""
    n = len(points)
    w = min(window, n)
    csum = np.concatenate([np.zeros_like(points[:1]), np.cumsum(points, axis=0)])
    start = np.minimum(np.arange(n), n - w)
    return (csum[start + w] - csum[start]) / w


def crop_transforms(landmarks: np.ndarray, cfg: VideoConfig) -> np.ndarray:
    """Affine maps from frame pixels to the roi_size crop, one per frame.

    landmarks: [T, 68, 2] complete (interpolated) landmarks in frame pixels. Returns [T, 2, 3].
    """
    smoothed = smooth_forward(landmarks)
    stable = list(STABLE_POINTS)
    half = cfg.crop_size // 2
    # The crop of crop_size is centre-cropped to roi_size: one extra shift of the margin.
    margin = (cfg.crop_size - cfg.roi_size) // 2
    out = np.empty((len(landmarks), 2, 3))
    for i in range(len(landmarks)):
        m = similarity(smoothed[i, stable], MEAN_FACE_256[stable])
        centre = apply(m, landmarks[i, MOUTH]).mean(0)
        # Keep the whole crop inside the 256 x 256 reference frame, as the recipe's cut_patch does.
        centre = np.clip(np.round(centre), half, REFERENCE_SIZE - half)
        m[:, 2] -= centre - half + margin
        out[i] = m
    return out


def warp_crops(gray: list[np.ndarray] | np.ndarray, transforms: np.ndarray, size: int) -> np.ndarray:
    """Warp each grayscale frame [H, W] uint8 with its [2, 3] transform into [size, size]: uint8 [T, size, size]."""
    out = np.empty((len(transforms), size, size), dtype=np.uint8)
    for i, (frame, m) in enumerate(zip(gray, transforms, strict=True)):
        out[i] = cv2.warpAffine(
            frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out


def decode_ahead(frames: Iterable[np.ndarray], depth: int = DECODE_AHEAD) -> Iterator[np.ndarray]:
    """Iterate `frames` (a video decoder) in a producer thread, up to `depth` frames ahead of the consumer,
    so decoding runs while the caller finds landmarks on the frames already decoded (ffmpeg and mediapipe
    both release the GIL). The decoder's own errors are re-raised here, in order; stopping early (the
    caller raises) stops the producer too."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for frame in frames:
                if not put(("frame", frame)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))
            return
        put(("end", None))

    producer = threading.Thread(target=produce, name="decode-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "frame":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        producer.join()


def extract_mouth_roi(
    path: Path,
    cfg: VideoConfig,
    detector: LandmarkDetector | None = None,
    landmark_stride: int = 1,
    overlap_decode: bool = False,
    limits: VideoLimits = DEFAULT_LIMITS,
) -> MouthROI:
    """Decode `path` at cfg.fps and return its normalised mouth crops.

    landmark_stride: find landmarks on every `landmark_stride`-th frame only (1 = every frame, the
    AV-HuBERT recipe) and on the last one; the frames between take landmarks interpolated linearly
    between their neighbours (as frames where no face was found do). At 2 the crops
    move by a mean of 0.5 px and at most 2 px of the frame on the carphone clip and the corpus
    (tests/diffv2s/test_video_mouth_roi.py). face_ratio counts the frames examined.
    overlap_decode: decode in a producer thread while landmarks are found (`decode_ahead`); the result is
    the same either way.
    limits: the pixel, frame-rate and frame-count bounds checked on the header and applied while decoding
    (a deployment's settings; the library's defaults otherwise).
    Raises the decode errors (EmptyFile, UnsupportedVideo, NoVideoStream, CorruptVideo, VideoTooShort,
    VideoTooLong) and NoFaceFound when fewer than cfg.min_face_ratio of the frames show a face.
    """
    if landmark_stride < 1:
        raise ValueError(f"landmark_stride must be >= 1, got {landmark_stride}")
    detector = detector or default_detector()
    reader = VideoReader(Path(path), cfg, limits)
    gray: list[np.ndarray] = []
    examined: list[int] = []

    def frames() -> Iterator[np.ndarray]:
        # Keep only grayscale copies: a third of the memory of the RGB frames the detector needs.
        source = decode_ahead(reader) if overlap_decode else iter(reader)
        newest: tuple[int, np.ndarray] | None = None  # held back one frame to know which one is last
        for i, rgb in enumerate(source):
            gray.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
            if newest is not None and newest[0] % landmark_stride == 0:
                examined.append(newest[0])
                yield newest[1]
            newest = (i, rgb)
        if newest is not None:  # the last frame always: no later detection to interpolate it from
            examined.append(newest[0])
            yield newest[1]

    sampled = detector.detect_video(frames())
    n = len(gray)
    found = FaceLandmarks(
        points=np.full((n, *sampled.points.shape[1:]), np.nan, dtype=np.float32),
        detected=np.zeros(n, dtype=bool),
    )
    found.points[examined] = sampled.points
    found.detected[examined] = sampled.detected
    n_face, n_seen = int(sampled.detected.sum()), len(examined)
    if n == 0 or n_face < cfg.min_face_ratio * n_seen:
        raise NoFaceFound(
            f"No face was found in {n_seen - n_face} of {n_seen} frames. "
            "Send a video where one face is visible and the mouth is not covered."
        )
    landmarks = interpolate_missing(found.points, found.detected)
    transforms = crop_transforms(landmarks, cfg)
    crops = warp_crops(gray, transforms, cfg.roi_size)
    normalised = (crops.astype(np.float32) / 255.0 - cfg.mean) / cfg.std
    return MouthROI(
        frames=normalised.astype(np.float32),
        face_ratio=n_face / n_seen,
        fps=cfg.fps,
        duration=reader.duration,
        n_frames=n,
        transforms=transforms,
        landmarks=landmarks.astype(np.float32),
    )
