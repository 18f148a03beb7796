"""Speaker-encoder cosine similarity (SECS) with the GE2E encoder carried by `resemblyzer` (the same
encoder the speaker extractor was trained against, see DESIGN.md)."""

from __future__ import annotations

import numpy as np

from lab.evaluation.signals import resample

SAMPLE_RATE = 16000


class SpeakerSimilarity:
    """Embeds utterances with resemblyzer's `VoiceEncoder` (256-d, unit norm); loaded once, on CPU."""

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder(device="cpu", verbose=False)

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """wav: [N] at `sample_rate` -> [256] unit vector."""
        from resemblyzer import preprocess_wav

        x = resample(wav, sample_rate, SAMPLE_RATE).astype(np.float32)
        trimmed = preprocess_wav(x, source_sr=None)
        # resemblyzer's VAD trim can empty a near-silent clip; embed the untrimmed audio then.
        if len(trimmed) < SAMPLE_RATE // 10:
            trimmed = x
        return np.asarray(self._encoder.embed_utterance(trimmed), dtype=np.float64)

    def secs(self, reference: np.ndarray, generated: np.ndarray, sample_rate: int) -> float:
        """Cosine similarity of the two utterances' speaker embeddings (1 = same embedding)."""
        a = self.embed(reference, sample_rate)
        b = self.embed(generated, sample_rate)
        return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
