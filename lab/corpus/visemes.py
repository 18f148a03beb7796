"""Phones -> mouth articulation over time, with coarticulation.

Each phone has a target for every mouth parameter and a dominance (how strongly it holds that
target, and how far its influence reaches in time) in the manner of Cohen & Massaro (1993): the
trajectory is the dominance-weighted mean of the targets of all phones. Bilabials dominate lip
opening (the lips must close), rounded vowels dominate spreading (rounding is anticipated over the
consonants before them), while jaw height follows the vowels.
"""

from __future__ import annotations

import numpy as np

from lab.corpus.phones import SILENCE, PhoneSegment

# jaw: lowering 0..1; open: lip aperture 0..1; spread: -1 rounded/protruded .. +1 spread;
# teeth_upper / teeth_lower: how much of each row shows 0..1; tongue: tongue tip at the teeth 0..1;
# tuck: lower lip drawn up under the upper teeth (f, v) 0..1.
MOUTH_PARAMS = ("jaw", "open", "spread", "teeth_upper", "teeth_lower", "tongue", "tuck")
_P = {name: i for i, name in enumerate(MOUTH_PARAMS)}

# phone: (jaw, open, spread, teeth_upper, teeth_lower, tongue, tuck)
_TARGETS: dict[str, tuple[float, ...]] = {
    SILENCE: (0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "p": (0.08, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "b": (0.08, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "m": (0.08, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "f": (0.12, 0.12, 0.1, 0.9, 0.0, 0.0, 1.0),
    "v": (0.12, 0.12, 0.1, 0.9, 0.0, 0.0, 1.0),
    "th": (0.2, 0.3, 0.1, 0.7, 0.4, 1.0, 0.0),
    "dh": (0.2, 0.3, 0.1, 0.7, 0.4, 1.0, 0.0),
    "t": (0.2, 0.28, 0.2, 0.6, 0.4, 0.6, 0.0),
    "d": (0.2, 0.28, 0.2, 0.6, 0.4, 0.6, 0.0),
    "n": (0.2, 0.28, 0.2, 0.6, 0.4, 0.6, 0.0),
    "l": (0.25, 0.32, 0.2, 0.6, 0.3, 0.8, 0.0),
    "s": (0.1, 0.18, 0.45, 0.9, 0.7, 0.0, 0.0),
    "z": (0.1, 0.18, 0.45, 0.9, 0.7, 0.0, 0.0),
    "sh": (0.15, 0.3, -0.6, 0.7, 0.5, 0.0, 0.0),
    "zh": (0.15, 0.3, -0.6, 0.7, 0.5, 0.0, 0.0),
    "ch": (0.15, 0.3, -0.6, 0.7, 0.5, 0.0, 0.0),
    "jh": (0.15, 0.3, -0.6, 0.7, 0.5, 0.0, 0.0),
    "k": (0.3, 0.35, 0.1, 0.4, 0.2, 0.0, 0.0),
    "g": (0.3, 0.35, 0.1, 0.4, 0.2, 0.0, 0.0),
    "ng": (0.3, 0.35, 0.1, 0.4, 0.2, 0.0, 0.0),
    "hh": (0.35, 0.4, 0.1, 0.3, 0.1, 0.0, 0.0),
    "y": (0.15, 0.25, 0.6, 0.7, 0.4, 0.0, 0.0),
    "r": (0.2, 0.25, -0.5, 0.4, 0.1, 0.0, 0.0),
    "w": (0.12, 0.12, -1.0, 0.0, 0.0, 0.0, 0.0),
    "er": (0.25, 0.3, -0.4, 0.4, 0.1, 0.0, 0.0),
    "iy": (0.15, 0.25, 0.8, 0.8, 0.5, 0.0, 0.0),
    "ih": (0.25, 0.35, 0.5, 0.6, 0.3, 0.0, 0.0),
    "ey": (0.35, 0.45, 0.5, 0.6, 0.3, 0.0, 0.0),
    "eh": (0.45, 0.5, 0.4, 0.5, 0.2, 0.0, 0.0),
    "ae": (0.65, 0.7, 0.5, 0.5, 0.2, 0.0, 0.0),
    "aa": (0.85, 0.85, 0.1, 0.4, 0.1, 0.0, 0.0),
    "ah": (0.5, 0.55, 0.1, 0.4, 0.1, 0.0, 0.0),
    "ao": (0.6, 0.6, -0.5, 0.3, 0.0, 0.0, 0.0),
    "ow": (0.45, 0.45, -0.8, 0.2, 0.0, 0.0, 0.0),
    "uh": (0.3, 0.35, -0.6, 0.2, 0.0, 0.0, 0.0),
    "uw": (0.2, 0.22, -1.0, 0.1, 0.0, 0.0, 0.0),
}
# Diphthongs move from the first target to the second over their duration.
_DIPHTHONGS = {"ay": ("aa", "iy"), "aw": ("aa", "uw"), "oy": ("ao", "iy")}
# ey and ow glide a little: treat them as (target, offglide) too.
_GLIDES = {"ey": ("ey", "iy"), "ow": ("ow", "uw")}

_VOWEL_LIKE = {"iy", "ih", "ey", "eh", "ae", "aa", "ah", "ao", "ow", "uh", "uw", "er", "ay", "aw", "oy"}
_STRONG_LIPS = {"p", "b", "m", "f", "v", "w"}
_ROUNDED = {"w", "uw", "ow", "uh", "ao", "r", "sh", "zh", "ch", "jh", "oy", "aw"}
_TONGUE_TIP = {"th", "dh", "t", "d", "n", "l"}


def _dominance(phone: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (magnitude [P], rate [P] in 1/s): how strongly a phone pulls each parameter, how fast it fades."""
    mag = np.full(len(MOUTH_PARAMS), 1.0)
    rate = np.full(len(MOUTH_PARAMS), 30.0)
    if phone == SILENCE:
        mag[:] = 0.6
        rate[:] = 20.0
    elif phone in _VOWEL_LIKE:
        mag[[_P["jaw"], _P["open"]]] = 1.5
        rate[:] = 18.0
    else:
        # Consonants made inside the mouth leave jaw and lips to the vowels around them.
        mag[[_P["jaw"], _P["open"], _P["spread"]]] = 0.35
    if phone in _STRONG_LIPS:
        mag[[_P["open"], _P["tuck"]]] = 30.0
        rate[[_P["open"], _P["tuck"]]] = 45.0
    if phone in _ROUNDED:
        mag[_P["spread"]] = 6.0
        rate[_P["spread"]] = 12.0  # reaches further: anticipatory rounding
    if phone in _TONGUE_TIP:
        mag[_P["tongue"]] = 8.0
        rate[_P["tongue"]] = 40.0
    if phone in {"s", "z", "f", "v", "iy"}:
        mag[[_P["teeth_upper"], _P["teeth_lower"]]] = 4.0
    return mag, rate


def _targets(seg: PhoneSegment) -> list[tuple[float, np.ndarray]]:
    """Key points (time, target [P]) of one segment; diphthongs and glides give two."""
    parts = _DIPHTHONGS.get(seg.phone) or _GLIDES.get(seg.phone)
    if parts:
        a, b = parts
        d = seg.end - seg.start
        return [
            (seg.start + 0.3 * d, np.asarray(_TARGETS[a])),
            (seg.start + 0.8 * d, np.asarray(_TARGETS[b])),
        ]
    return [(seg.centre, np.asarray(_TARGETS.get(seg.phone, _TARGETS["ah"])))]


def mouth_trajectory(
    phones: list[PhoneSegment],
    times: np.ndarray,
    rng: np.random.Generator | None = None,
    jitter_s: float = 0.0,
) -> np.ndarray:
    """Mouth parameters at `times` (seconds). -> [len(times), len(MOUTH_PARAMS)] float32.

    `jitter_s` shifts each phone's key points by a random amount (timing jitter of the articulation
    against the audio), drawn from `rng`.
    """
    keys_t: list[float] = []
    keys_v: list[np.ndarray] = []
    keys_m: list[np.ndarray] = []
    keys_r: list[np.ndarray] = []
    for seg in phones:
        shift = float(rng.normal(0.0, jitter_s)) if (rng is not None and jitter_s > 0) else 0.0
        mag, rate = _dominance(seg.phone)
        # A long silence holds the rest pose across its length, not only at its centre.
        points = _targets(seg)
        if seg.phone == SILENCE and seg.end - seg.start > 0.2:
            rest = np.asarray(_TARGETS[SILENCE])
            points = [(t, rest) for t in np.arange(seg.start + 0.05, seg.end - 0.049, 0.1)]
        for t, target in points:
            keys_t.append(t + shift)
            keys_v.append(target)
            keys_m.append(mag)
            keys_r.append(rate)
    kt = np.asarray(keys_t)[:, None, None]  # [K, 1, 1]
    kv = np.stack(keys_v)[:, None, :]  # [K, 1, P]
    km = np.stack(keys_m)[:, None, :]
    kr = np.stack(keys_r)[:, None, :]
    dist = np.abs(times[None, :, None] - kt)  # [K, T, 1]
    dom = km * np.exp(-kr * dist) + 1e-9  # [K, T, P]
    traj = (dom * kv).sum(axis=0) / dom.sum(axis=0)
    return traj.astype(np.float32)


def frame_mouth(phones: list[PhoneSegment], n_frames: int, fps: float, **kwargs: object) -> np.ndarray:
    """Mouth parameters per video frame, averaged over the frame's exposure. -> [n_frames, P]."""
    sub = 4
    times = (np.arange(n_frames * sub) + 0.5) / (fps * sub)
    traj = mouth_trajectory(phones, times, **kwargs)  # type: ignore[arg-type]
    return traj.reshape(n_frames, sub, -1).mean(axis=1)
