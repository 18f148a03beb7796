"""Landmarks: the 68-point mapping of the mediapipe mesh, face-track selection, the mean face."""

from __future__ import annotations

import numpy as np
import pytest

from diffv2s.video.landmarks import MESH_TO_DLIB68, MediapipeDetector, select_track
from diffv2s.video.mean_face import (
    MEAN_FACE_256,
    MIRROR,
    PLACEMENT_SCALE,
    PLACEMENT_SHIFT,
    apply,
    average_shape,
    similarity,
)
from tests.fixtures.videos import carphone_path, grace_hopper_rgb, read_rgb_frames


@pytest.fixture(scope="module")
def detector() -> MediapipeDetector:
    return MediapipeDetector()


@pytest.fixture(scope="module")
def carphone_landmarks(detector: MediapipeDetector):
    return detector.detect_video(read_rgb_frames(carphone_path()))


def test_mapping_is_68_distinct_mesh_points() -> None:
    assert len(MESH_TO_DLIB68) == 68 and len(set(MESH_TO_DLIB68)) == 68
    assert all(0 <= i < 468 for i in MESH_TO_DLIB68)
    assert sorted(MIRROR) == list(range(68))
    assert all(MIRROR[MIRROR[i]] == i for i in range(68))


def test_mapping_follows_the_dlib_layout(detector: MediapipeDetector) -> None:
    (pts,) = detector.detect_image(grace_hopper_rgb())
    # The subject's right side is on the image's left: jaw 0, right brow, right eye, mouth corner 48.
    assert pts[0, 0] < pts[8, 0] < pts[16, 0]
    assert pts[36, 0] < pts[39, 0] < pts[42, 0] < pts[45, 0]
    assert pts[48, 0] < pts[51, 0] < pts[54, 0]
    # Top to bottom: brows, eyes, nose tip, nose bottom, upper lip, lower lip, chin.
    order = [
        pts[17:27, 1].mean(),
        pts[36:48, 1].mean(),
        pts[30, 1],
        pts[33, 1],
        pts[51, 1],
        pts[57, 1],
        pts[8, 1],
    ]
    assert order == sorted(order)
    assert pts[37, 1] < pts[41, 1] and pts[62, 1] < pts[66, 1]  # upper lid above lower, lips likewise


def test_mapping_is_mirror_consistent(detector: MediapipeDetector) -> None:
    # Detecting on the mirrored photo must give the mirrored landmarks with left/right points swapped;
    # a wrongly paired point in MESH_TO_DLIB68 shows up as a large error here.
    image = grace_hopper_rgb()
    (pts,) = detector.detect_image(image)
    (flipped,) = detector.detect_image(np.ascontiguousarray(image[:, ::-1]))
    back = flipped.copy()
    back[:, 0] = image.shape[1] - 1 - back[:, 0]
    back = back[list(MIRROR)]
    eye_span = np.linalg.norm(pts[45] - pts[36])
    err = np.linalg.norm(back - pts, axis=1) / eye_span
    assert err.max() < 0.08, err.argmax()


def test_carphone_face_found_on_every_frame(carphone_landmarks) -> None:
    assert carphone_landmarks.points.shape == (120, 68, 2)
    assert carphone_landmarks.ratio >= 0.95
    ok = carphone_landmarks.points[carphone_landmarks.detected]
    assert np.isfinite(ok).all()
    # Inside the 176 x 144 frame, mouth below the eyes.
    assert (ok[..., 0] > 0).all() and (ok[..., 0] < 176).all() and (ok[..., 1] < 144).all()
    assert (ok[:, 48:68, 1].mean(1) > ok[:, 36:48, 1].mean(1)).all()


def test_no_face_gives_nan_and_false(detector: MediapipeDetector) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 96, 128, 3), dtype=np.uint8)
    found = detector.detect_video(frames)
    assert not found.detected.any() and found.ratio == 0.0
    assert np.isnan(found.points).all()


def test_largest_face_track_is_chosen(detector: MediapipeDetector) -> None:
    # The carphone face (large) and Grace Hopper (small) side by side in every frame.
    small = grace_hopper_rgb()[::5, ::5]  # 120 x 103
    frames = []
    for rgb in read_rgb_frames(carphone_path())[:40]:
        canvas = np.full((144, 320, 3), 128, np.uint8)
        canvas[:, :176] = rgb
        canvas[10 : 10 + small.shape[0], 200 : 200 + small.shape[1]] = small
        frames.append(canvas)
    (hopper,) = detector.detect_image(frames[0][:, 180:])
    assert len(detector.detect_image(frames[0])) == 2  # both faces are really detectable
    found = detector.detect_video(frames)
    assert found.ratio >= 0.95
    assert (found.points[found.detected][..., 0] < 176).all()  # always the carphone face
    assert hopper[:, 0].min() + 180 > 176


def _face(x: float, y: float, size: float) -> np.ndarray:
    return MEAN_FACE_256 / 256 * size + [x, y]


def test_select_track_prefers_frames_times_area() -> None:
    # A medium face in all 10 frames beats a big face seen in 2 frames; a small face never wins.
    frames = []
    for t in range(10):
        faces = [_face(300 + t, 50, 100), _face(10, 10, 30)]
        if t in (3, 4):
            faces.append(_face(0, 200, 150))
        frames.append(faces)
    found = select_track(frames)
    assert found.detected.all()
    assert np.allclose(found.points[:, 8], [_face(300 + t, 50, 100)[8] for t in range(10)])


def test_select_track_bridges_gaps() -> None:
    frames = [[_face(100, 100, 80)] if t not in (4, 5) else [] for t in range(10)]
    found = select_track(frames)
    assert found.detected.tolist() == [t not in (4, 5) for t in range(10)]
    assert np.isnan(found.points[4]).all()


def test_mean_face_is_rebuilt_from_its_inputs(detector: MediapipeDetector, carphone_landmarks) -> None:
    (hopper,) = detector.detect_image(grace_hopper_rgb())
    ref = carphone_landmarks.points[0]
    carphone = np.mean([apply(similarity(p, ref), p) for p in carphone_landmarks.points], axis=0)
    rebuilt = average_shape([hopper, carphone]) * PLACEMENT_SCALE + np.array(PLACEMENT_SHIFT)
    assert np.abs(rebuilt - MEAN_FACE_256).max() < 1.0


def test_mean_face_is_symmetric_and_upright() -> None:
    mirrored = MEAN_FACE_256[list(MIRROR)] * [-1, 1]
    centre_x = MEAN_FACE_256[[27, 28, 29, 30, 33, 51, 57, 8], 0]
    assert np.ptp(centre_x) < 0.2
    assert np.abs(mirrored[:, 0] + 2 * centre_x.mean() - MEAN_FACE_256[:, 0]).max() < 0.2
    assert np.abs(mirrored[:, 1] - MEAN_FACE_256[:, 1]).max() < 0.2
    # Inside the 256 frame with room for a 96 px crop around the mouth.
    mouth = MEAN_FACE_256[48:68].mean(0)
    assert (mouth > 48).all() and (mouth < 208).all()
