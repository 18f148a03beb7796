"""A speaker's face: a real photo warped and recoloured into an identity, with a drawn mouth.

`FaceModel.render(poses, nuisance)` -> frames. The identity (photo, face shape, skin, lips, glasses,
clothes/background colour) is fixed per speaker; head pose and lighting change per utterance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from lab.corpus import photos as ph
from lab.corpus.mouth import MouthStyle, draw_mouth
from lab.corpus.visemes import MOUTH_PARAMS

_JAW = MOUTH_PARAMS.index("jaw")


@dataclass(frozen=True)
class FaceSpec:
    """Identity of a face. Lengths are relative (1 = the photo's own)."""

    photo: str
    mirror: bool = False
    face_width: float = 1.0
    chin_length: float = 1.0
    mouth_width: float = 1.0
    lip_thickness: float = 1.0
    skin_tone: tuple[float, float, float] = (1.0, 0.0, 0.0)  # skin lightness scale, Lab a and b shifts
    lip_color: tuple[int, int, int] = (95, 85, 165)  # BGR
    teeth_color: tuple[int, int, int] = (215, 225, 232)
    surround_hue: int = 0  # hue rotation (OpenCV units, 0..179) of clothes and background
    glasses: tuple[int, int, int] | None = None  # frame colour, or no glasses
    zoom: float = 1.0  # face size in the frame


@dataclass(frozen=True)
class Nuisance:
    """Per-utterance variation: head pose (degrees, pixels, scale), its drift, lighting and noise."""

    rotation: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    drift: float = 0.0  # amplitude of slow head motion (degrees; pixels = 1.5 x this)
    drift_phase: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gain: float = 1.0
    gradient: tuple[float, float] = (0.0, 0.0)  # side lighting: relative gain change across the frame
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # BGR gains
    gamma: float = 1.0
    noise: float = 0.0  # sensor noise std (grey levels)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Nuisance:
        return cls(
            rotation=float(rng.normal(0.0, 3.0)),
            shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
            scale=float(rng.uniform(0.94, 1.06)),
            drift=float(rng.uniform(0.3, 1.5)),
            drift_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 3)),  # type: ignore[arg-type]
            gain=float(rng.uniform(0.8, 1.15)),
            gradient=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.15, 0.15))),
            tint=tuple(float(v) for v in rng.uniform(0.92, 1.08, 3)),  # type: ignore[arg-type]
            gamma=float(rng.uniform(0.9, 1.1)),
            noise=float(rng.uniform(0.0, 3.0)),
        )


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class FaceModel:
    """The identity canvas of one speaker (built once), rendered per frame with a mouth pose."""

    def __init__(self, spec: FaceSpec, size: int = 224) -> None:
        self.spec = spec
        self.size = size
        photo = ph.load_photo(spec.photo)
        image, lm = photo.image, photo.landmarks.copy()
        if spec.mirror:
            image = image[:, ::-1].copy()
            lm[:, 0] = image.shape[1] - 1 - lm[:, 0]
        # Crop: a square around the face, the face about half the frame wide.
        oval = lm[list(ph.FACE_OVAL)]
        centre = oval.mean(axis=0)
        face_h = float(np.ptp(oval[:, 1]))
        side = 1.75 * face_h / spec.zoom
        scale = size / side
        crop = np.array(
            [
                [scale, 0, size / 2 - scale * centre[0]],
                [0, scale, size / 2 - scale * (centre[1] + 0.04 * face_h)],
            ]
        )
        canvas = cv2.warpAffine(
            image, crop, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
        )
        pts = lm @ crop[:, :2].T + crop[:, 2]
        canvas, pts = self._reshape(canvas, pts)
        masks = self._masks(canvas, pts)
        canvas = self._recolour(canvas, masks)
        if spec.glasses is not None:
            self._draw_glasses(canvas, pts, spec.glasses)
        canvas = self._erase_mouth(canvas, pts)
        self.canvas = canvas
        self.landmarks = pts
        corners = pts[[ph.MOUTH_LEFT, ph.MOUTH_RIGHT]]
        self.mouth_centre = (
            float(corners[:, 0].mean()),
            float(0.5 * (pts[ph.UPPER_LIP_INNER, 1] + pts[ph.LOWER_LIP_INNER, 1])),
        )
        half_width = 0.5 * float(np.linalg.norm(corners[1] - corners[0])) * spec.mouth_width
        lip_scale = half_width / 18.0  # lip thickness in proportion to the mouth, then per speaker
        self.style = MouthStyle(
            half_width=half_width,
            upper_lip=5.0 * lip_scale * spec.lip_thickness,
            lower_lip=6.5 * lip_scale * spec.lip_thickness,
            lip_color=spec.lip_color,
            teeth_color=spec.teeth_color,
            blur=max(0.0, 0.4 * (scale - 1.0)),
        )
        self._jaw_weight = self._jaw_field(pts)
        self._grid = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))

    # --- identity -------------------------------------------------------------------------------
    def _reshape(self, canvas: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face width about the face's midline and chin length below the nose, by a smooth warp."""
        spec = self.spec
        if spec.face_width == 1.0 and spec.chin_length == 1.0:
            return canvas, pts
        n = self.size
        xx, yy = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
        oval = pts[list(ph.FACE_OVAL)]
        cx, cy = oval.mean(axis=0)
        rx, ry = 0.5 * np.ptp(oval[:, 0]), 0.5 * np.ptp(oval[:, 1])
        inside = np.exp(-((((xx - cx) / (1.5 * rx)) ** 2 + ((yy - cy) / (1.4 * ry)) ** 2) ** 2))
        nose_y = pts[ph.NOSE_TIP, 1]
        below = _smoothstep(yy, nose_y - 0.1 * ry, nose_y + 0.2 * ry)
        # Backward map: a destination pixel reads from where the stretched face came from.
        src_x = cx + (xx - cx) / (1.0 + (spec.face_width - 1.0) * inside)
        src_y = nose_y + (yy - nose_y) / (1.0 + (spec.chin_length - 1.0) * below * inside)
        src_y = np.where(yy >= nose_y, src_y, yy)
        out = cv2.remap(canvas, src_x.astype(np.float32), src_y.astype(np.float32), cv2.INTER_CUBIC,
                        borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        # Forward-move the landmarks the same way (the map is smooth: invert by a few fixed-point steps).
        moved = pts.copy()
        for _ in range(5):
            ix = np.clip(moved[:, 0].round().astype(int), 0, n - 1)
            iy = np.clip(moved[:, 1].round().astype(int), 0, n - 1)
            moved += pts - np.stack([src_x[iy, ix], src_y[iy, ix]], axis=1)
        return out, moved

    def _masks(self, canvas: np.ndarray, pts: np.ndarray) -> dict[str, np.ndarray]:
        """Soft masks [H, W] in 0..1: skin (face, ears, neck: by colour near the face) and surround."""
        n = self.size
        face = np.zeros((n, n), np.uint8)
        cv2.fillPoly(face, [pts[list(ph.FACE_OVAL)].round().astype(np.int32)], 255)
        features = np.zeros_like(face)
        # Eye whites and lips keep their colour; brows are darkened with the skin.
        for contour in (ph.LEFT_EYE, ph.RIGHT_EYE, ph.LIPS_OUTER):
            cv2.fillPoly(features, [pts[list(contour)].round().astype(np.int32)], 255)
        lab = cv2.cvtColor(canvas, cv2.COLOR_BGR2LAB).astype(np.float32)
        ref = np.median(lab[(face > 0) & (features == 0)], axis=0)
        # Skin is whatever near the head has the face's chroma (so neck and ears change with the face).
        chroma = np.hypot(lab[..., 1] - ref[1], lab[..., 2] - ref[2])
        like = np.exp(-((chroma / 9.0) ** 2)) * np.exp(
            -((np.maximum(ref[0] - 70 - lab[..., 0], 0) / 20.0) ** 2)
        )
        oval = pts[list(ph.FACE_OVAL)]
        c = oval.mean(axis=0)
        w, h = np.ptp(oval[:, 0]), np.ptp(oval[:, 1])
        near = np.zeros_like(face)
        cv2.ellipse(near, (int(c[0]), int(c[1] + 0.3 * h)), (int(0.8 * w), int(1.0 * h)), 0, 0, 360, 255, -1)
        near_f = cv2.GaussianBlur(near, (0, 0), 5.0).astype(np.float32) / 255.0
        skin = np.maximum(face.astype(np.float32) / 255.0, like * near_f)
        skin = skin * (1.0 - features.astype(np.float32) / 255.0)
        skin = cv2.GaussianBlur(skin, (0, 0), 1.5)
        # Head = face oval grown upwards (hair) and sideways; the rest is clothes and background.
        head = np.zeros_like(face)
        cv2.ellipse(
            head, (int(c[0]), int(c[1] - 0.25 * h)), (int(0.85 * w), int(0.95 * h)), 0, 0, 360, 255, -1
        )
        surround = 1.0 - cv2.GaussianBlur(head, (0, 0), 6.0).astype(np.float32) / 255.0
        surround *= 1.0 - np.clip(skin * 1.5, 0.0, 1.0)
        return {"skin": skin, "surround": surround}

    def _recolour(self, canvas: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
        spec = self.spec
        out = canvas.astype(np.float32)
        if spec.skin_tone != (1.0, 0.0, 0.0):
            lab = cv2.cvtColor(canvas, cv2.COLOR_BGR2LAB).astype(np.float32)
            scale, da, db = spec.skin_tone
            # Scaling lightness keeps the photo's shading and texture; shifts move the hue.
            new = lab.copy()
            new[..., 0] *= scale
            new[..., 1] += da
            new[..., 2] += db
            w = masks["skin"][..., None]
            lab = lab * (1 - w) + new * w
            out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR).astype(np.float32)
        if spec.surround_hue:
            hsv = cv2.cvtColor(out.astype(np.uint8), cv2.COLOR_BGR2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + spec.surround_hue) % 180
            rotated = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float32)
            w = masks["surround"][..., None]
            out = out * (1 - w) + rotated * w
        return np.clip(out, 0, 255).round().astype(np.uint8)

    def _draw_glasses(self, canvas: np.ndarray, pts: np.ndarray, color: tuple[int, int, int]) -> None:
        centres = []
        for eye in (ph.RIGHT_EYE, ph.LEFT_EYE):
            e = pts[list(eye)]
            c = e.mean(axis=0)
            w = 0.75 * np.ptp(e[:, 0])
            centres.append(c)
            cv2.ellipse(
                canvas, (int(c[0]), int(c[1])), (int(w), int(0.7 * w)), 0, 0, 360, color, 2, cv2.LINE_AA
            )
        (x1, y1), (x2, y2) = centres
        gap = 0.75 * np.ptp(pts[list(ph.LEFT_EYE)][:, 0])
        cv2.line(canvas, (int(x1 + gap), int(y1)), (int(x2 - gap), int(y2)), color, 2, cv2.LINE_AA)

    def _erase_mouth(self, canvas: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """Paint skin over the photo's own mouth; the drawn mouth replaces it."""
        mask: np.ndarray = np.zeros(canvas.shape[:2], np.uint8)
        cv2.fillPoly(mask, [pts[list(ph.LIPS_OUTER)].round().astype(np.int32)], 255)
        half_width = 0.5 * np.linalg.norm(pts[ph.MOUTH_RIGHT] - pts[ph.MOUTH_LEFT])
        k = max(3, int(0.35 * half_width) | 1)
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        out = cv2.inpaint(canvas, mask, 5, cv2.INPAINT_TELEA)
        # Inpainting leaves a flat patch; a touch of blur hides its edge.
        soft = cv2.GaussianBlur(mask, (0, 0), 2.0).astype(np.float32)[..., None] / 255.0
        blurred = cv2.GaussianBlur(out, (0, 0), 1.2)
        return (out * (1 - soft) + blurred * soft).round().astype(np.uint8)

    def _jaw_field(self, pts: np.ndarray) -> np.ndarray:
        """How far each pixel moves down when the jaw drops: 1 on chin and lower lip, 0 above the mouth."""
        n = self.size
        xx, yy = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
        mx, my = self.mouth_centre
        a = self.style.half_width
        chin_y = pts[ph.CHIN, 1]
        oval = pts[list(ph.FACE_OVAL)]
        rx = 0.5 * np.ptp(oval[:, 0])
        vertical = _smoothstep(yy, my - 0.1 * a, my + 0.8 * a)
        neck = 1.0 - _smoothstep(yy, chin_y + 0.05 * rx, chin_y + 0.5 * rx)
        across = np.exp(-(((xx - mx) / (0.75 * rx)) ** 4))
        return (vertical * neck * across).astype(np.float32)

    # --- per frame ------------------------------------------------------------------------------
    def render(self, poses: np.ndarray, nuisance: Nuisance, rng: np.random.Generator) -> np.ndarray:
        """poses: [T, len(MOUTH_PARAMS)] -> frames [T, size, size, 3] uint8 RGB (drawing is in BGR)."""
        n = self.size
        xx, yy = self._grid
        frames = np.empty((len(poses), n, n, 3), np.uint8)
        light = self._lighting(nuisance)
        jaw_travel = 0.55 * self.style.half_width
        for t, pose in enumerate(poses):
            drop = jaw_travel * float(pose[_JAW])
            frame = cv2.remap(self.canvas, xx, yy - drop * self._jaw_weight, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)  # fmt: skip
            draw_mouth(frame, self.mouth_centre, pose, self.style)
            frame = cv2.warpAffine(frame, self._pose_matrix(nuisance, t), (n, n), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)  # fmt: skip
            out = frame.astype(np.float32) * light
            if nuisance.gamma != 1.0:
                out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** nuisance.gamma
            if nuisance.noise > 0:
                out += rng.normal(0.0, nuisance.noise, out.shape).astype(np.float32)
            frames[t] = cv2.cvtColor(np.clip(out, 0, 255).round().astype(np.uint8), cv2.COLOR_BGR2RGB)
        return frames

    def _pose_matrix(self, nu: Nuisance, t: int) -> np.ndarray:
        n = self.size
        p = nu.drift_phase
        # Slow head motion: a few seconds per sway, different in each axis.
        angle = nu.rotation + nu.drift * np.sin(2 * np.pi * t / 90.0 + p[0])
        dx = nu.shift[0] * n + 1.5 * nu.drift * np.sin(2 * np.pi * t / 70.0 + p[1])
        dy = nu.shift[1] * n + 1.5 * nu.drift * np.sin(2 * np.pi * t / 110.0 + p[2])
        m = cv2.getRotationMatrix2D((n / 2, n / 2), angle, nu.scale)
        m[:, 2] += (dx, dy)
        return m

    def _lighting(self, nu: Nuisance) -> np.ndarray:
        n = self.size
        xx, yy = self._grid
        g = nu.gain * (1.0 + nu.gradient[0] * (xx / n - 0.5) * 2 + nu.gradient[1] * (yy / n - 0.5) * 2)
        return (g[..., None] * np.array(nu.tint, np.float32)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def face_model(spec: FaceSpec, size: int = 224) -> FaceModel:
    """Built once per speaker and process."""
    return FaceModel(spec, size)
