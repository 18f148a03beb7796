"""The mouth-ROI speed levers of the CPU path: decoding in a producer thread (same ROI, errors come
through) and landmarks on every other frame (crops within a stated pixel tolerance of every frame's)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffv2s.config import VideoConfig
from diffv2s.errors import CorruptVideo
from diffv2s.video.landmarks import MediapipeDetector
from diffv2s.video.mouth_roi import MouthROI, decode_ahead, extract_mouth_roi
from tests.fixtures.videos import carphone_path, read_rgb_frames, write_video

CFG = VideoConfig()
# Tolerance of landmark_stride=2 against every frame's landmarks, in pixels of the frame: how far any
# corner or the centre of the 88 x 88 crop moves (measured on the carphone clip: mean 0.50, max 1.62; on
# the first 44 corpus test sentences: mean 0.35-0.53, max 1.83).
STRIDE2_MEAN_PX, STRIDE2_MAX_PX = 0.6, 2.0


@pytest.fixture(scope="module")
def detector() -> MediapipeDetector:
    return MediapipeDetector()


@pytest.fixture(scope="module")
def every_frame(detector: MediapipeDetector) -> MouthROI:
    return extract_mouth_roi(carphone_path(), CFG, detector=detector)


def crop_shift_px(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a, b: [T, 2, 3] frame -> crop transforms. Per frame, the largest distance (frame pixels) between
    where the two crops take their corners and centre from."""
    corners = np.array([[0, 0], [87, 0], [0, 87], [87, 87], [43.5, 43.5]])
    out = []
    for ma, mb in zip(a, b, strict=True):
        ia, ib = cv2.invertAffineTransform(ma), cv2.invertAffineTransform(mb)
        pa, pb = corners @ ia[:, :2].T + ia[:, 2], corners @ ib[:, :2].T + ib[:, 2]
        out.append(np.linalg.norm(pa - pb, axis=1).max())
    return np.array(out)


def test_overlapped_decode_gives_the_same_roi(detector: MediapipeDetector, every_frame: MouthROI) -> None:
    threads = threading.active_count()
    roi = extract_mouth_roi(carphone_path(), CFG, detector=detector, overlap_decode=True)
    np.testing.assert_array_equal(roi.frames, every_frame.frames)
    np.testing.assert_array_equal(roi.transforms, every_frame.transforms)
    assert roi.duration == every_frame.duration and roi.n_frames == every_frame.n_frames
    assert threading.active_count() == threads  # the producer is gone


def test_decode_ahead_keeps_order_and_raises_the_decoders_error_in_place() -> None:
    def frames() -> Iterator[np.ndarray]:
        for i in range(5):
            yield np.full((2, 2), i)
        raise CorruptVideo("cut off")

    seen = []
    with pytest.raises(CorruptVideo, match="cut off"):
        for frame in decode_ahead(frames(), depth=2):
            seen.append(int(frame[0, 0]))
    assert seen == [0, 1, 2, 3, 4]


def test_decode_ahead_stops_the_producer_when_the_consumer_stops() -> None:
    threads = threading.active_count()
    gen = decode_ahead((np.zeros(1) for _ in range(1000)), depth=1)
    next(gen)
    gen.close()
    assert threading.active_count() == threads


def test_landmarks_on_every_other_frame_stay_within_the_tolerance(
    detector: MediapipeDetector, every_frame: MouthROI
) -> None:
    roi = extract_mouth_roi(carphone_path(), CFG, detector=detector, landmark_stride=2)
    assert roi.frames.shape == every_frame.frames.shape and roi.face_ratio == 1.0
    shift = crop_shift_px(every_frame.transforms, roi.transforms)
    assert shift.mean() <= STRIDE2_MEAN_PX, shift.mean()
    assert shift.max() <= STRIDE2_MAX_PX, shift.max()


def test_landmark_stride_counts_the_face_ratio_on_the_frames_it_examines(
    tmp_path: Path, detector: MediapipeDetector
) -> None:
    frames = read_rgb_frames(carphone_path())
    for i in range(30, 54):  # 24 of 120 frames show no face
        frames[i] = np.full_like(frames[i], 120)
    path = write_video(tmp_path / "gap.mp4", frames, fps=30000 / 1001)
    roi = extract_mouth_roi(path, CFG, detector=detector, landmark_stride=2)
    assert 0.7 < roi.face_ratio < 0.85
    assert np.isfinite(roi.landmarks).all()
    with pytest.raises(ValueError, match="landmark_stride"):
        extract_mouth_roi(path, CFG, detector=detector, landmark_stride=0)
