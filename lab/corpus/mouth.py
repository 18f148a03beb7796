"""Drawing the mouth: lips, inner mouth, teeth and tongue tip from the articulation parameters.

Only what a camera sees of a mouth is drawn, and every colour is the speaker's (lip colour, teeth
shade) — nothing in the drawing depends on which phone is spoken except through the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lab.corpus.visemes import MOUTH_PARAMS

_P = {name: i for i, name in enumerate(MOUTH_PARAMS)}
_SS = 4  # supersampling of the mouth patch (anti-aliased edges)


@dataclass(frozen=True)
class MouthStyle:
    """Per-speaker mouth geometry (pixels in the face canvas) and colours (BGR)."""

    half_width: float
    upper_lip: float  # thickness at the centre
    lower_lip: float
    lip_color: tuple[int, int, int]
    teeth_color: tuple[int, int, int]
    cavity_color: tuple[int, int, int] = (28, 22, 48)
    tongue_color: tuple[int, int, int] = (110, 105, 190)
    blur: float = 0.0  # match the photo's own sharpness (an upscaled photo is soft)


def _profile(x: np.ndarray, half: float, power: float) -> np.ndarray:
    return np.clip(1.0 - (x / max(half, 1e-6)) ** 2, 0.0, 1.0) ** power


def draw_mouth(canvas: np.ndarray, centre: tuple[float, float], pose: np.ndarray, style: MouthStyle) -> None:
    """Draw a mouth in place on `canvas` [H, W, 3] uint8 BGR, its closed lip line at `centre` (x, y).

    pose: [len(MOUTH_PARAMS)] articulation (see visemes.MOUTH_PARAMS).
    """
    jaw, opening, spread = float(pose[_P["jaw"]]), float(pose[_P["open"]]), float(pose[_P["spread"]])
    teeth_up, teeth_low = float(pose[_P["teeth_upper"]]), float(pose[_P["teeth_lower"]])
    tongue, tuck = float(pose[_P["tongue"]]), float(pose[_P["tuck"]])
    round_ = max(-spread, 0.0)
    a0 = style.half_width
    a = a0 * (1.0 + 0.10 * max(spread, 0.0) - 0.30 * round_)
    h = max(opening, 0.0) * 1.15 * a0 + 0.1 * jaw * a0
    if opening < 0.03:
        h = 0.0  # lips together: the jaw may be a little open behind them
    ai = a * (0.85 - 0.35 * round_)
    t_up = style.upper_lip * (1.0 + 0.35 * round_) * (1.0 - 0.15 * tuck)
    t_low = style.lower_lip * (1.0 + 0.30 * round_) * (1.0 - 0.45 * tuck)
    if h == 0.0 and tuck < 0.1:
        t_up *= 0.92  # pressed lips look thinner
        t_low *= 0.92

    # Patch around the mouth, drawn at _SS x resolution and clipped to the canvas.
    half = int(np.ceil(max(1.1 * a, 0.35 * h + t_up, 0.65 * h + t_low) + 4))
    cx, cy = centre
    H, W = canvas.shape[:2]
    x0, y0 = int(round(cx)) - half, int(round(cy)) - half
    size = 2 * half
    if x0 < 0 or y0 < 0 or x0 + size > W or y0 + size > H:
        pad = size
        big = cv2.copyMakeBorder(canvas, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        draw_mouth(big, (cx + pad, cy + pad), pose, style)
        canvas[:] = big[pad : pad + H, pad : pad + W]
        return
    ox, oy = (cx - x0) * _SS, (cy - y0) * _SS  # mouth centre in patch pixels (supersampled)
    s = float(_SS)

    xs = np.linspace(-a, a, 41)
    pin = _profile(xs, ai, 0.7)
    pout = _profile(xs, a, 0.55)
    bow = np.exp(-((xs / (0.18 * a0)) ** 2))
    y_ui = -0.35 * h * pin
    y_li = 0.65 * h * pin
    y_uo = y_ui - t_up * pout * (1.0 - 0.22 * bow)
    y_lo = y_li + t_low * pout

    def pts(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([ox + s * x, oy + s * y], axis=1).round().astype(np.int32)

    lips_mask: np.ndarray = np.zeros((size * _SS, size * _SS), np.uint8)
    color: np.ndarray = np.zeros((size * _SS, size * _SS, 3), np.uint8)
    upper = np.concatenate([pts(xs, y_uo), pts(xs[::-1], y_ui[::-1])])
    lower = np.concatenate([pts(xs, y_li), pts(xs[::-1], y_lo[::-1])])
    lip = np.array(style.lip_color, np.float64)
    cv2.fillPoly(color, [upper], tuple(int(c) for c in lip * 0.82))
    cv2.fillPoly(color, [lower], tuple(int(c) for c in np.minimum(lip * 1.05, 255)))
    cv2.fillPoly(lips_mask, [upper, lower], 255)
    # A soft highlight on the lower lip gives it volume.
    hl: np.ndarray = np.zeros_like(lips_mask)
    hl_c = (int(ox), int(oy + s * (0.65 * h + 0.45 * t_low)))
    cv2.ellipse(hl, hl_c, (max(1, int(s * 0.45 * a)), max(1, int(s * 0.22 * t_low))), 0, 0, 360, 255, -1)
    hl = cv2.GaussianBlur(hl, (0, 0), s * 0.8)
    lit = np.minimum(color + hl[..., None] * 0.12, 255).astype(np.uint8)
    color = np.where(lips_mask[..., None] > 0, lit, color)

    inner = np.zeros_like(lips_mask)
    if h > 0.3:
        inside = np.abs(xs) < ai
        cavity = np.concatenate([pts(xs[inside], y_ui[inside]), pts(xs[inside][::-1], y_li[inside][::-1])])
        cv2.fillPoly(inner, [cavity], 255)
        cv2.fillPoly(color, [cavity], style.cavity_color)
        # Upper teeth hang from the upper lip; lower teeth rise from the lower lip.
        feat = np.zeros_like(color)
        feat_mask = np.zeros_like(lips_mask)
        up_h = min(teeth_up * 0.3 * a0, h)
        if up_h > 0.2:
            top = oy - s * 0.35 * h - s * 2
            rect = (
                int(ox - s * 0.8 * ai),
                int(top),
                int(ox + s * 0.8 * ai),
                int(oy + s * (-0.35 * h + up_h)),
            )
            cv2.rectangle(feat, rect[:2], rect[2:], style.teeth_color, -1)
            cv2.rectangle(feat_mask, rect[:2], rect[2:], 255, -1)
            for k in (-2, -1, 0, 1, 2):  # gaps between incisors
                gx = int(ox + s * k * 0.22 * a0)
                cv2.line(
                    feat, (gx, rect[1]), (gx, rect[3]), tuple(int(c * 0.8) for c in style.teeth_color), 1
                )
        low_h = min(teeth_low * 0.2 * a0, max(h - up_h, 0.0))
        if low_h > 0.2:
            bottom = oy + s * 0.65 * h + s * 2
            rect = (
                int(ox - s * 0.7 * ai),
                int(oy + s * (0.65 * h - low_h)),
                int(ox + s * 0.7 * ai),
                int(bottom),
            )
            shade = tuple(int(c * 0.9) for c in style.teeth_color)
            cv2.rectangle(feat, rect[:2], rect[2:], shade, -1)
            cv2.rectangle(feat_mask, rect[:2], rect[2:], 255, -1)
        if tongue > 0.05:
            ty = oy + s * (-0.35 * h + up_h + 0.12 * a0 * tongue)
            axes = (max(1, int(s * 0.45 * ai * tongue)), max(1, int(s * 0.16 * a0 * tongue)))
            cv2.ellipse(feat, (int(ox), int(ty)), axes, 0, 0, 360, style.tongue_color, -1)
            cv2.ellipse(feat_mask, (int(ox), int(ty)), axes, 0, 0, 360, 255, -1)
        keep = (feat_mask > 0) & (inner > 0)
        color[keep] = feat[keep]
        # The back of the mouth is darker than its front edge.
        dark: np.ndarray = np.zeros_like(inner)
        cv2.ellipse(
            dark,
            (int(ox), int(oy)),
            (max(1, int(s * 0.5 * ai)), max(1, int(s * 0.3 * h))),
            0,
            0,
            360,
            255,
            -1,
        )
        dark = cv2.GaussianBlur(dark, (0, 0), s * 1.5)
        shade_mask = (inner > 0) & ~keep
        color[shade_mask] = (color[shade_mask] * (1.0 - 0.4 * dark[shade_mask, None] / 255.0)).astype(
            np.uint8
        )
    else:
        # Closed lips: a dark seam where they meet.
        cv2.polylines(color, [pts(xs, y_ui)], False, tuple(int(c * 0.45) for c in lip), max(1, int(s * 0.5)))

    alpha = cv2.GaussianBlur(np.maximum(lips_mask, inner), (0, 0), s * 0.6)
    small_c: np.ndarray = cv2.resize(color, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    small_a: np.ndarray = (
        cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255.0
    )
    if style.blur > 0:
        small_c = cv2.GaussianBlur(small_c, (0, 0), style.blur)
        small_a = cv2.GaussianBlur(small_a, (0, 0), style.blur)[..., None]
    region = canvas[y0 : y0 + size, x0 : x0 + size].astype(np.float32)
    canvas[y0 : y0 + size, x0 : x0 + size] = (
        (region * (1.0 - small_a) + small_c * small_a).round().astype(np.uint8)
    )
