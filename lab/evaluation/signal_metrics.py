"""Intrusive signal metrics against the ground-truth waveform: STOI, ESTOI (pystoi) and PESQ wide-band
(ITU-T P.862.2 through the `pesq` package). Both signals are resampled to 16 kHz and cut to the same length;
they must be time-aligned (the synthesizer's output spans exactly the video, as does the corpus audio)."""

from __future__ import annotations

import numpy as np

from lab.evaluation.signals import match_length, resample

SAMPLE_RATE = 16000


def _pair(reference: np.ndarray, generated: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    ref = resample(reference, sample_rate, SAMPLE_RATE)
    gen = resample(generated, sample_rate, SAMPLE_RATE)
    return match_length(ref, gen)


def stoi(reference: np.ndarray, generated: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al. 2011); `extended=True` gives ESTOI (Jensen &
    Taal 2016). reference, generated: [N] at `sample_rate`. 1 = identical."""
    from pystoi import stoi as _stoi

    ref, gen = _pair(reference, generated, sample_rate)
    return float(_stoi(ref, gen, SAMPLE_RATE, extended=extended))


def pesq_wb(reference: np.ndarray, generated: np.ndarray, sample_rate: int) -> float:
    """PESQ wide-band MOS-LQO (1.0 .. 4.64). NaN when PESQ finds no speech in the reference."""
    from pesq import PesqError, pesq

    ref, gen = _pair(reference, generated, sample_rate)
    try:
        return float(pesq(SAMPLE_RATE, ref.astype(np.float32), gen.astype(np.float32), "wb"))
    except PesqError:
        return float("nan")
