"""Scores of one generated utterance against its ground truth, and their aggregation per system."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab.evaluation.dnsmos import dnsmos
from lab.evaluation.grammar_asr import GrammarASR
from lab.evaluation.mcd import mel_cepstral_distortion
from lab.evaluation.signal_metrics import pesq_wb, stoi
from lab.evaluation.speaker_similarity import SpeakerSimilarity
from lab.evaluation.text import slot_accuracy, word_errors

# The metric keys every system entry of the report has (besides n_utterances and the slot accuracies).
METRICS = ("wer", "wer_whisper", "stoi", "estoi", "pesq", "mcd", "secs", "dnsmos")


@dataclass
class UtteranceScore:
    """Metrics of one utterance of one system. NaN = not measured (or undefined, e.g. PESQ on silence)."""

    utt_id: str
    speaker: str
    reference: str
    hyp_grammar: str | None
    hyp_whisper: str | None
    stoi: float
    estoi: float
    pesq: float
    mcd: float
    secs: float
    dnsmos: float
    dnsmos_sig: float
    dnsmos_bak: float
    dnsmos_p808: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scorer:
    """Holds the ASRs and the speaker encoder (loaded once). `whisper=False` skips Whisper (slow on CPU);
    `grammar=False` skips the GRID grammar ASR (meaningless on open-vocabulary speech such as LRS3)."""

    def __init__(
        self, whisper: bool = True, cache_dir: Path | None = None, threads: int = 1, grammar: bool = True
    ) -> None:
        self.grammar = GrammarASR() if grammar else None
        self.speakers = SpeakerSimilarity()
        self.whisper = None
        if whisper:
            from lab.evaluation.whisper_asr import WhisperASR

            self.whisper = WhisperASR(cache_dir=cache_dir, threads=threads)
        self._reference_embeddings: dict[str, np.ndarray] = {}

    def _secs(self, utt_id: str, reference: np.ndarray, wav: np.ndarray, sample_rate: int) -> float:
        ref = self._reference_embeddings.get(utt_id)
        if ref is None:
            ref = self._reference_embeddings[utt_id] = self.speakers.embed(reference, sample_rate)
        gen = self.speakers.embed(wav, sample_rate)
        return float(np.dot(ref, gen) / max(np.linalg.norm(ref) * np.linalg.norm(gen), 1e-12))

    def score(
        self, utt_id: str, speaker: str, text: str, reference: np.ndarray, wav: np.ndarray, sample_rate: int
    ) -> UtteranceScore:
        """reference, wav: [N] float at `sample_rate`, time-aligned (same video)."""
        n = min(len(reference), len(wav))
        ref, gen = np.asarray(reference[:n], np.float64), np.asarray(wav[:n], np.float64)
        with warnings.catch_warnings():
            # pesq/pystoi warn (and return NaN / low values) on silent input; the NaN is reported as such.
            warnings.simplefilter("ignore", RuntimeWarning)
            mos = dnsmos(gen, sample_rate)
            return UtteranceScore(
                utt_id=utt_id,
                speaker=speaker,
                reference=text,
                hyp_grammar=None if self.grammar is None else self.grammar.transcribe(gen, sample_rate),
                hyp_whisper=None if self.whisper is None else self.whisper.transcribe(gen, sample_rate),
                stoi=stoi(ref, gen, sample_rate),
                estoi=stoi(ref, gen, sample_rate, extended=True),
                pesq=pesq_wb(ref, gen, sample_rate),
                mcd=mel_cepstral_distortion(ref, gen, sample_rate),
                secs=self._secs(utt_id, ref, gen, sample_rate),
                dnsmos=mos["ovrl"],
                dnsmos_sig=mos["sig"],
                dnsmos_bak=mos["bak"],
                dnsmos_p808=mos["p808"],
            )

    def describe_unreferenced(self, wav: np.ndarray, sample_rate: int) -> dict[str, Any]:
        """What can be said of audio without ground truth: duration, DNSMOS, both transcripts."""
        mos = dnsmos(wav, sample_rate)
        return {
            "seconds": len(wav) / sample_rate,
            "dnsmos": mos["ovrl"],
            "dnsmos_sig": mos["sig"],
            "dnsmos_bak": mos["bak"],
            "dnsmos_p808": mos["p808"],
            "hyp_grammar": None if self.grammar is None else self.grammar.transcribe(wav, sample_rate),
            "hyp_whisper": None if self.whisper is None else self.whisper.transcribe(wav, sample_rate),
        }


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def summarize(rows: list[UtteranceScore], grid: bool = True) -> dict[str, Any]:
    """Per-system aggregate: corpus-level WERs (errors / reference words), per-slot accuracy of the grammar
    ASR (and of Whisper), and the mean of every signal metric over utterances (NaNs left out and counted).
    `grid=False` (open-vocabulary references, e.g. LRS3): no per-slot or sentence accuracy; a WER whose
    ASR did not run is None."""
    refs = [r.reference for r in rows]
    grammar = [r.hyp_grammar for r in rows]
    grammar_ran = bool(rows) and all(h is not None for h in grammar)
    out: dict[str, Any] = {"n_utterances": len(rows)}
    out["wer"] = word_errors(refs, [h or "" for h in grammar]).wer if grammar_ran else None
    whisper = [r.hyp_whisper for r in rows]
    if rows and all(h is not None for h in whisper):
        hyps = [h or "" for h in whisper]
        out["wer_whisper"] = word_errors(refs, hyps).wer
        if grid:
            out["slot_accuracy_whisper"] = slot_accuracy(refs, hyps)
    else:
        out["wer_whisper"] = None
    for key in ("stoi", "estoi", "pesq", "mcd", "secs", "dnsmos", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808"):
        values = [float(getattr(r, key)) for r in rows]
        out[key] = _mean(values)
        n_nan = sum(math.isnan(v) for v in values)
        if n_nan:
            out[f"{key}_undefined"] = n_nan
    if not grid:
        return out
    hyps_grammar = [h or "" for h in grammar]
    out["slot_accuracy"] = slot_accuracy(refs, hyps_grammar) if grammar_ran else {}
    out["sentence_accuracy"] = (
        float(np.mean([word_errors([r], [h]).wer == 0 for r, h in zip(refs, hyps_grammar, strict=True)]))
        if grammar_ran
        else None
    )
    return out
