"""Mouth ROI: the AV-HuBERT preparation on the real carphone clip, its pieces, and the no-face error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from diffv2s.config import VideoConfig
from diffv2s.errors import NoFaceFound
from diffv2s.video.decode import decode_video
from diffv2s.video.landmarks import MediapipeDetector
from diffv2s.video.mean_face import MEAN_FACE_256, apply
from diffv2s.video.mouth_roi import (
    STABLE_POINTS,
    MouthROI,
    crop_transforms,
    extract_mouth_roi,
    interpolate_missing,
    smooth_forward,
)
from tests.fixtures.videos import carphone_path, read_rgb_frames, write_video

CFG = VideoConfig()


@pytest.fixture(scope="module")
def detector() -> MediapipeDetector:
    return MediapipeDetector()


@pytest.fixture(scope="module")
def carphone_roi(detector: MediapipeDetector) -> MouthROI:
    return extract_mouth_roi(carphone_path(), CFG, detector=detector)


def test_carphone_roi_shape_and_coverage(carphone_roi: MouthROI) -> None:
    roi = carphone_roi
    assert roi.face_ratio >= 0.95
    assert roi.frames.shape == (100, 88, 88) and roi.frames.dtype == np.float32
    assert roi.n_frames == 100 and roi.fps == 25.0
    assert roi.duration == pytest.approx(4.004, abs=1e-3)
    assert np.isfinite(roi.frames).all()


def test_roi_is_normalised_gray_pixels(carphone_roi: MouthROI) -> None:
    pixels = (carphone_roi.frames * CFG.std + CFG.mean) * 255
    # Back to whole gray levels 0..255: the normalisation is (x / 255 - 0.421) / 0.165 of uint8 pixels.
    assert np.abs(pixels - np.round(pixels)).max() < 1e-3
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    # A face crop, not a constant or an empty border: mean near the normalisation mean, real contrast.
    assert abs(float(carphone_roi.frames.mean())) < 1.5
    assert float(carphone_roi.frames.std(axis=(1, 2)).min()) > 0.2


def test_roi_matches_a_direct_warp_of_the_frame(carphone_roi: MouthROI) -> None:
    # The crop is the decoded gray frame warped by the returned transform (checks the pixel path).
    video = decode_video(carphone_path(), CFG)
    k = 50
    gray = cv2.cvtColor(video.frames[k], cv2.COLOR_RGB2GRAY)
    crop = cv2.warpAffine(gray, carphone_roi.transforms[k], (88, 88), flags=cv2.INTER_LINEAR)
    expected = (crop / 255.0 - CFG.mean) / CFG.std
    assert np.abs(expected - carphone_roi.frames[k]).max() < 1e-4


def test_roi_is_centred_on_the_mouth(carphone_roi: MouthROI, detector: MediapipeDetector) -> None:
    # Independent check: warp whole frames with the ROI transforms into a larger canvas (the ROI is its
    # centre 88 x 88), detect the face again there, and find the mouth at the ROI centre, upright and at
    # the mean face's scale.
    video = decode_video(carphone_path(), CFG)
    pad = 84
    errors, widths, tilts = [], [], []
    for k in range(0, 100, 9):
        m = carphone_roi.transforms[k].copy()
        m[:, 2] += pad
        canvas = cv2.warpAffine(video.frames[k], m, (88 + 2 * pad, 88 + 2 * pad), flags=cv2.INTER_LINEAR)
        faces = detector.detect_image(canvas)
        assert faces, k
        pts = faces[0] - pad  # ROI coordinates
        errors.append(np.linalg.norm(pts[48:68].mean(0) - 44.0))
        widths.append(pts[54, 0] - pts[48, 0])
        tilts.append(abs(pts[45, 1] - pts[36, 1]) / (pts[45, 0] - pts[36, 0]))
    assert max(errors) < 6.0, errors
    mean_width = MEAN_FACE_256[54, 0] - MEAN_FACE_256[48, 0]
    assert 0.75 * mean_width < np.median(widths) < 1.3 * mean_width
    assert max(tilts) < 0.2  # eye line within ~11 degrees of horizontal


def test_roi_mouth_is_darker_than_cheeks(carphone_roi: MouthROI) -> None:
    # The lips and the mouth opening are darker and busier than the skin at the crop's upper corners.
    centre = carphone_roi.frames[:, 34:54, 24:64]
    cheeks = np.concatenate([carphone_roi.frames[:, 2:14, 2:14], carphone_roi.frames[:, 2:14, 74:86]], axis=2)
    assert centre.mean() < cheeks.mean() - 0.3
    assert centre.std(axis=(1, 2)).mean() > cheeks.std(axis=(1, 2)).mean()


def test_interpolation_fills_gaps_linearly_and_copies_edges() -> None:
    t = np.arange(8, dtype=np.float64)
    points = np.stack([np.stack([t * 2, t + 1], axis=-1)] * 68, axis=1)  # [8, 68, 2]
    detected = np.array([False, True, True, False, False, True, True, False])
    holed = points.copy()
    holed[~detected] = np.nan
    filled = interpolate_missing(holed, detected)
    assert np.allclose(filled[1:7], points[1:7])  # linear motion is recovered inside
    assert np.allclose(filled[0], points[1]) and np.allclose(filled[7], points[6])


def test_forward_smoothing_matches_the_recipe_window() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 68, 2))
    got = smooth_forward(x, 12)
    for i in range(30):
        start = min(i, 30 - 12)  # the last frames reuse the last full window
        assert np.allclose(got[i], x[start : start + 12].mean(0))
    assert np.allclose(smooth_forward(x[:5], 12), x[:5].mean(0))  # shorter than the window


def test_transforms_undo_a_known_similarity() -> None:
    # A face = the mean face rotated by 20 degrees, scaled by 0.6 and shifted: the ROI transform must
    # map its stable points onto the mean face's and its mouth centre onto the ROI centre.
    a, s = np.deg2rad(20), 0.6
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    face = MEAN_FACE_256 @ rot.T + [40.0, 25.0]
    m = crop_transforms(np.repeat(face[None], 5, axis=0), CFG)[2]
    stable = list(STABLE_POINTS)
    mouth = MEAN_FACE_256[48:68].mean(0)
    shift = np.round(mouth) - 48 + 4  # crop origin in the 256 frame, then the 96 -> 88 centre crop
    assert np.allclose(apply(m, face[stable]), MEAN_FACE_256[stable] - shift, atol=1e-6)
    assert np.allclose(apply(m, face[48:68]).mean(0), 44 + mouth - np.round(mouth), atol=1e-6)


def test_partly_hidden_face_is_interpolated(tmp_path: Path, detector: MediapipeDetector) -> None:
    frames = read_rgb_frames(carphone_path())
    for i in range(30, 54):  # 24 of 120 frames show no face
        frames[i] = np.full_like(frames[i], 120)
    path = write_video(tmp_path / "gap.mp4", frames, fps=30000 / 1001)
    roi = extract_mouth_roi(path, CFG, detector=detector)
    assert 0.7 < roi.face_ratio < 0.85
    assert np.isfinite(roi.landmarks).all()
    # Interpolated landmarks stay on the face: between the detections around the gap.
    gap = roi.landmarks[27:44, 48:68].mean(1)
    lo = np.minimum(roi.landmarks[26, 48:68].mean(0), roi.landmarks[45, 48:68].mean(0)) - 1
    hi = np.maximum(roi.landmarks[26, 48:68].mean(0), roi.landmarks[45, 48:68].mean(0)) + 1
    assert ((gap >= lo) & (gap <= hi)).all()


def test_no_face_is_a_clear_error(tmp_path: Path, detector: MediapipeDetector) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    frames = [
        np.stack([(xx + 3 * t) % 256, yy * 2, np.full_like(xx, 90)], -1).astype(np.uint8) for t in range(50)
    ]
    path = write_video(tmp_path / "gradient.mp4", frames, fps=25)
    with pytest.raises(NoFaceFound, match="No face was found in 50 of 50 frames") as info:
        extract_mouth_roi(path, CFG, detector=detector)
    assert "mouth is not covered" in info.value.message
    assert info.value.code == "no_face_found"


def test_mostly_faceless_video_is_rejected(tmp_path: Path, detector: MediapipeDetector) -> None:
    frames = read_rgb_frames(carphone_path())
    for i in range(0, 80):  # two thirds without a face: below min_face_ratio 0.5
        frames[i] = np.full_like(frames[i], 60)
    path = write_video(tmp_path / "mostly_empty.mp4", frames, fps=30000 / 1001)
    with pytest.raises(NoFaceFound):
        extract_mouth_roi(path, CFG, detector=detector)


def test_a_deployments_limits_bound_the_decode(tmp_path: Path, detector: MediapipeDetector) -> None:
    """The limits given (a worker's settings) apply, not the library defaults: the carphone clip is within
    the defaults and over a deployment's lower frame and pixel limits, each refused with its typed code."""
    from diffv2s.errors import ResolutionTooHigh, TooManyFrames
    from diffv2s.video.decode import DEFAULT_LIMITS, VideoLimits

    frames = read_rgb_frames(carphone_path())[:40]
    path = write_video(tmp_path / "clip.mp4", frames, fps=25)
    h, w = frames[0].shape[:2]
    assert extract_mouth_roi(path, CFG, detector=detector, limits=DEFAULT_LIMITS).face_ratio > 0.9
    with pytest.raises(TooManyFrames) as info:
        extract_mouth_roi(path, CFG, detector=detector, limits=VideoLimits(max_frames=20))
    assert info.value.code == "too_many_frames"
    with pytest.raises(ResolutionTooHigh) as too_big:
        extract_mouth_roi(path, CFG, detector=detector, limits=VideoLimits(max_pixels=w * h - 1))
    assert too_big.value.code == "resolution_too_high"
