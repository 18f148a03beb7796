"""Face landmarks per frame in the 68-point dlib convention, detected with mediapipe FaceMesh.

Why mediapipe and not dlib (the AV-HuBERT recipe's tools): on the carphone clip (176 x 144, 120 frames,
same 2-core machine) mediapipe FaceMesh found the face on 120/120 frames at ~3.2 ms/frame; dlib's HOG detector
found none without upsampling and 115/120 with 2x upsampling at ~8 ms/frame (with the 68-point predictor);
dlib's CNN detector, the one the recipe uses, needs ~500 ms/frame. Against dlib's 68 points the mapped
mediapipe points differ by 5 % of the eye-corner distance on average (mouth 4 %, eyes 3 %, jaw 10 %).
`bench/bench_preprocess.py` repeats the measurement when dlib is installed. The recipe only needs the
68-point layout, so the 468-point mesh is reduced to it with `MESH_TO_DLIB68` below.

Several faces in view: every frame may report up to `max_faces` faces; faces are linked into tracks by
bounding-box IoU with the previous frame, and the track with the largest sum of box areas (frames x
area) is kept, so a big face that stays in view wins over a passer-by or a small face in the background.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Mediapipe mesh vertex for each of the 68 dlib points, in dlib order. Chosen on the mesh topology so
# that left/right pairs are mirror vertices of the mesh (the jaw follows the face oval, the eyes use the
# lid vertices nearest dlib's 1/3 and 2/3 positions, the lips use the outer and inner lip contours).
MESH_TO_DLIB68: tuple[int, ...] = (
    # 0-16 jaw, from the subject's right ear (image left) over the chin to the left ear
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,
    # 17-21 right brow (outer to inner), 22-26 left brow (inner to outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge to tip, 31-35 lower nose from right to left
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # 36-41 right eye, 42-47 left eye (corner, upper lid x2, corner, lower lid x2)
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # 48-59 outer lips from the right corner, over the upper lip, back along the lower lip
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lips
    78, 81, 13, 311, 308, 402, 14, 178,
)  # fmt: skip

N_POINTS = 68


@dataclass
class FaceLandmarks:
    """Landmarks of the chosen face in every frame.

    points: float32 [T, 68, 2] pixel (x, y) in the frame; NaN where no face was found.
    detected: bool [T], True where `points` is valid.
    """

    points: np.ndarray
    detected: np.ndarray

    @property
    def ratio(self) -> float:
        """Share of frames with a face (0 for an empty video)."""
        return float(self.detected.mean()) if len(self.detected) else 0.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes [x0, y0, x1, y1]."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _box(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(axis=0), *points.max(axis=0)], dtype=np.float64)


def select_track(faces_per_frame: list[list[np.ndarray]], min_iou: float = 0.3) -> FaceLandmarks:
    """Link faces across frames by IoU and keep the track with the largest total box area.

    faces_per_frame: for every frame, a list of [68, 2] landmark arrays (possibly empty).
    A track continues from its last seen box (gaps are allowed), so a face lost for a few frames
    is picked up again rather than starting a new track.
    """
    n = len(faces_per_frame)
    tracks: list[dict[str, Any]] = []  # {"box": last box, "frames": {t: points}, "score": sum of areas}
    for t, faces in enumerate(faces_per_frame):
        taken: set[int] = set()
        # Bigger faces choose first so a small face never steals the main track.
        for pts in sorted(faces, key=lambda p: -_area(_box(p))):
            box = _box(pts)
            best, best_iou = -1, min_iou
            for i, tr in enumerate(tracks):
                if i in taken or t in tr["frames"]:
                    continue
                iou = _iou(tr["box"], box)
                if iou > best_iou:
                    best, best_iou = i, iou
            if best < 0:
                tracks.append({"box": box, "frames": {}, "score": 0.0})
                best = len(tracks) - 1
            tr = tracks[best]
            tr["box"], tr["frames"][t] = box, pts
            tr["score"] += _area(box)
            taken.add(best)
    points = np.full((n, N_POINTS, 2), np.nan, dtype=np.float32)
    detected = np.zeros(n, dtype=bool)
    if tracks:
        chosen = max(tracks, key=lambda tr: tr["score"])
        for t, pts in chosen["frames"].items():
            points[t] = pts
            detected[t] = True
    return FaceLandmarks(points=points, detected=detected)


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


class MediapipeDetector:
    """mediapipe FaceMesh in video (tracking) mode, reduced to the 68 dlib points.

    One instance runs one video at a time: FaceMesh keeps tracking state between frames and is not
    thread-safe, so `detect_video` holds a lock and resets the tracker at the start of every video.
    """

    def __init__(self, max_faces: int = 3, min_confidence: float = 0.5) -> None:
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self._lock = threading.Lock()
        self._mesh: Any = None
        self._index = np.asarray(MESH_TO_DLIB68, dtype=np.int64)

    def _new_mesh(self, static: bool = False) -> Any:
        # Imported here: mediapipe takes ~0.5 s to import and is only needed by the workers.
        from mediapipe.python.solutions import face_mesh

        with warnings.catch_warnings():
            # mediapipe 0.10.21 builds its graph with a deprecated protobuf call; nothing we can fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            return face_mesh.FaceMesh(
                static_image_mode=static,
                max_num_faces=self.max_faces,
                refine_landmarks=False,
                min_detection_confidence=self.min_confidence,
                min_tracking_confidence=self.min_confidence,
            )

    def _faces(self, mesh: Any, rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        result = mesh.process(np.ascontiguousarray(rgb))
        faces = []
        for face in result.multi_face_landmarks or ():
            lm = face.landmark
            xy = np.array([(lm[i].x * w, lm[i].y * h) for i in self._index], dtype=np.float32)
            faces.append(xy)
        return faces

    def detect_video(self, frames: Iterable[np.ndarray]) -> FaceLandmarks:
        """Landmarks of the main face of a video.

        frames: RGB uint8 [H, W, 3] frames in time order (a [T, H, W, 3] array works too).
        """
        with self._lock:
            # A fresh graph per video: the tracker must not carry a face over from the previous video.
            if self._mesh is not None:
                self._mesh.close()
            self._mesh = self._new_mesh()
            faces = [self._faces(self._mesh, f) for f in frames]
        return select_track(faces)

    def detect_image(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces in one still image: a list of [68, 2] landmark arrays (largest first)."""
        with self._new_mesh(static=True) as mesh:
            faces = self._faces(mesh, rgb)
        return sorted(faces, key=lambda p: -_area(_box(p)))


_local = threading.local()


def default_detector() -> MediapipeDetector:
    """This thread's detector (created on first use). One per thread, so the worker's task threads
    can find faces in parallel while its model thread runs a batch; FaceMesh itself is not thread-safe."""
    detector = getattr(_local, "detector", None)
    if detector is None:
        detector = _local.detector = MediapipeDetector()
    return detector
