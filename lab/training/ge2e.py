"""The speaker extractor's target: the GE2E embedding of the `resemblyzer` package (256-d, 16 kHz).

The weights ship inside the package, so nothing is downloaded. resemblyzer trims silences with
webrtcvad (the `webrtcvad-wheels` build) before embedding.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly

GE2E_RATE = 16000
GE2E_DIM = 256


class GE2EEmbedder:
    """embed(wav, rate) -> float32 [256], unit norm. Loads the encoder once (about 1 s)."""

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder("cpu", verbose=False)

    def embed(self, wav: np.ndarray, rate: int) -> np.ndarray:
        """wav: float32 [N] mono at `rate` Hz -> [256] unit vector."""
        from resemblyzer import preprocess_wav

        if rate != GE2E_RATE:
            g = math.gcd(int(rate), GE2E_RATE)
            wav = resample_poly(wav, GE2E_RATE // g, int(rate) // g)
        wav = np.asarray(wav, dtype=np.float32)
        trimmed = preprocess_wav(wav)
        # Voice-activity trimming can remove everything from a very quiet clip: embed it untrimmed then.
        if len(trimmed) < GE2E_RATE // 4:
            trimmed = wav
        emb = np.asarray(self._encoder.embed_utterance(trimmed), dtype=np.float32)
        return emb / max(float(np.linalg.norm(emb)), 1e-8)
