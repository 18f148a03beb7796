"""Mel-cepstral distortion (MCD) with DTW alignment.

Features: SPTK mel-cepstra (`pysptk.mcep`, UELS analysis) of order 24 with all-pass constant 0.42
(the usual value for 16 kHz), on 25 ms Blackman-windowed frames every 5 ms of 16 kHz audio. Frames more
than 40 dB below a signal's loudest frame are dropped from that signal (leading/trailing silence would
otherwise dominate a short utterance and their cepstra are meaningless). The two sequences are aligned by
dynamic time warping on the Euclidean distance of c1..c24, and

    MCD = mean over the warping path of (10 / ln 10) * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2)   [dB]

(c0, the frame energy, is excluded, as is conventional).
"""

from __future__ import annotations

import warnings

import numpy as np

from lab.evaluation.signals import resample

SAMPLE_RATE = 16000
ORDER = 24
ALPHA = 0.42
FRAME = 400  # 25 ms
HOP = 80  # 5 ms
FFT = 512
SILENCE_DB = 40.0
_K = 10.0 / np.log(10.0) * np.sqrt(2.0)


def mel_cepstrum(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """wav: [N] -> mel-cepstra of the voiced/loud frames: [T, ORDER + 1] (column 0 = c0)."""
    with warnings.catch_warnings():
        # pysptk imports the deprecated pkg_resources; the warning is noise for our users.
        warnings.simplefilter("ignore", UserWarning)
        import pysptk

    x = resample(wav, sample_rate, SAMPLE_RATE)
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    n = 1 + (len(x) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    frames = x[idx] * np.blackman(FRAME)[None, :]
    energy_db = 10.0 * np.log10(np.sum(frames**2, axis=1) + 1e-12)
    keep = energy_db > energy_db.max() - SILENCE_DB
    padded = np.zeros((int(keep.sum()), FFT))
    padded[:, :FRAME] = frames[keep]
    # etype=1 adds eps to the periodogram, so near-silent frames cannot make the iteration diverge.
    mc = pysptk.mcep(padded, order=ORDER, alpha=ALPHA, etype=1, eps=1e-8, maxiter=100)
    return np.atleast_2d(np.asarray(mc, dtype=np.float64))


def dtw_path(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost monotonic alignment of a [N, M] cost matrix (steps (1,1), (1,0), (0,1)) -> [L, 2]."""
    from librosa.sequence import dtw

    _, path = dtw(C=cost, backtrack=True)
    return np.asarray(path[::-1])


def mel_cepstral_distortion(reference: np.ndarray, generated: np.ndarray, sample_rate: int) -> float:
    """MCD in dB between two waveforms [N] at `sample_rate` (0 for identical signals)."""
    a = mel_cepstrum(reference, sample_rate)[:, 1:]
    b = mel_cepstrum(generated, sample_rate)[:, 1:]
    diff = a[:, None, :] - b[None, :, :]
    dist = np.sqrt(np.sum(diff**2, axis=-1))  # [N, M]
    path = dtw_path(dist)
    return float(_K * dist[path[:, 0], path[:, 1]].mean())
