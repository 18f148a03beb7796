"""DNSMOS P.835 (Reddy et al. 2022): a non-intrusive MOS predictor, through `speechmos`, whose wheel
carries the ONNX models (`speechmos/dnsmos_models/sig_bak_ovr.onnx`, `model_v8.onnx`); nothing is
downloaded. The models score 9.01 s windows; `speechmos` tiles shorter clips to that length, so a 2 s
GRID utterance is scored as the same utterance repeated."""

from __future__ import annotations

import numpy as np

from lab.evaluation.signals import resample

SAMPLE_RATE = 16000


def dnsmos(wav: np.ndarray, sample_rate: int) -> dict[str, float]:
    """wav: [N] in [-1, 1] -> {"ovrl", "sig", "bak", "p808"} MOS estimates (1..5)."""
    from speechmos import dnsmos as _dnsmos

    x = np.clip(resample(wav, sample_rate, SAMPLE_RATE), -1.0, 1.0).astype(np.float32)
    if not np.any(x):
        # The P.808 model normalises by the clip's peak; all-zero input has none.
        x = x + np.float32(1e-6)
    out = _dnsmos.run(x, SAMPLE_RATE)
    return {
        "ovrl": float(out["ovrl_mos"]),
        "sig": float(out["sig_mos"]),
        "bak": float(out["bak_mos"]),
        "p808": float(out["p808_mos"]),
    }
