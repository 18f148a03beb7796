"""`make_corpus`: speakers x utterances -> mp4 + transcript per utterance, in three splits.

Layout: `{out}/{split}/{speaker}/{utt}.mp4` + `.json`, and `{out}/corpus.json` (the manifest).
Splits: `train`; `test_unseen_sentences` (train speakers, sentences nowhere in train); and
`test_unseen_speaker` (the last selected speaker, never in train). Every sentence in a corpus is
distinct, so the sentence split is disjoint by construction.

Transcript (`{utt}.json`): `text` (GRID words, letters as letters), `spoken_text` (as handed to the
engine), `words` and `phones` with start/end seconds on the mp4's clock (phones from the engine,
`phone` canonical ARPAbet, `label` the engine's own), `voice`, `nuisance`, `n_frames`, `duration`, and
`mouth`: the articulation that drew each frame (ground truth for probes; never a model input).

Determinism: the sentences come from `seed` alone and each utterance's nuisance (tempo, silences,
head pose, lighting, noise, articulation jitter) from (seed, speaker number, utterance number), so
the result does not depend on the order or the number of worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from lab.corpus import tts
from lab.corpus.face import Nuisance, face_model
from lab.corpus.manifest import FORMAT, FORMAT_VERSION, SPLITS, write_manifest
from lab.corpus.phones import PhoneSegment
from lab.corpus.sentences import Sentence, draw_sentences
from lab.corpus.visemes import MOUTH_PARAMS, frame_mouth
from lab.corpus.voices import SPEAKER_BY_ID, select_speakers
from lab.corpus.writer import read_json, write_json, write_mp4

FPS = 25
SAMPLE_RATE = 22050  # the vocoder's rate (HiFi-GAN universal)
FRAME_SIZE = 224
_PEAK = 0.8


@dataclass(frozen=True)
class UtteranceJob:
    utt_id: str
    speaker_id: str
    speaker_number: int
    index: int
    split: str
    sentence_index: int
    seed: int
    size: int


def plan_corpus(
    speakers: int | list[str],
    utterances: int,
    seed: int,
    unseen_speakers: int = 1,
    test_fraction: float = 0.1,
    size: int = FRAME_SIZE,
) -> list[UtteranceJob]:
    """Which utterance goes where. `utterances` is per speaker."""
    chosen = select_speakers(speakers)
    if utterances < 1:
        raise ValueError("--utterances must be >= 1")
    n_unseen = unseen_speakers if len(chosen) > unseen_speakers else 0
    held_out = {s.id for s in chosen[len(chosen) - n_unseen :]}
    sentences = draw_sentences(np.random.default_rng(seed), len(chosen) * utterances)
    n_test = max(1, round(test_fraction * utterances)) if utterances >= 2 else 0
    jobs: list[UtteranceJob] = []
    for k, spk in enumerate(chosen):
        number = int(spk.id[3:])
        for i in range(utterances):
            if spk.id in held_out:
                split = "test_unseen_speaker"
            elif i < n_test:
                split = "test_unseen_sentences"
            else:
                split = "train"
            sentence = sentences[k * utterances + i]
            jobs.append(
                UtteranceJob(f"{spk.id}_{i:05d}", spk.id, number, i, split, sentence.index, seed, size)
            )
    return jobs


def _to_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32)
    g = math.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def _shift(phones: list[PhoneSegment], offset: float) -> list[PhoneSegment]:
    return [PhoneSegment(p.phone, p.label, p.start + offset, p.end + offset, p.word) for p in phones]


def make_utterance(job: UtteranceJob, out: Path) -> dict[str, Any]:
    """Synthesise, render and write one utterance; returns its transcript."""
    spk = SPEAKER_BY_ID[job.speaker_id]
    sentence = Sentence.from_index(job.sentence_index)
    rng = np.random.default_rng([job.seed, job.speaker_number, job.index])
    tempo = spk.rate * float(rng.uniform(0.9, 1.1))
    syn = tts.synthesize(spk.voice, sentence.spoken_words, tempo)
    audio = _to_rate(syn.audio, syn.sample_rate)
    peak = float(np.abs(audio).max())
    audio = audio * (_PEAK / peak) if peak > 0 else audio

    # Silence before and after, then pad the end so audio and video last exactly n_frames / FPS.
    lead, tail = rng.uniform(0.05, 0.3, size=2)
    n_lead = int(round(lead * SAMPLE_RATE))
    speech = len(audio) / SAMPLE_RATE
    n_frames = math.ceil((lead + speech + tail) * FPS)
    n_samples = n_frames * SAMPLE_RATE // FPS
    padded = np.zeros(n_samples, np.float32)
    padded[n_lead : n_lead + len(audio)] = audio[: n_samples - n_lead]
    duration = n_samples / SAMPLE_RATE
    phones = tts.fit_to_duration(_shift(syn.phones, n_lead / SAMPLE_RATE), duration)

    # The face moves with the engine's phones, jittered a little against the audio.
    av_offset = float(rng.uniform(-0.02, 0.02))
    jitter = 0.01
    poses = frame_mouth(_shift(phones, av_offset), n_frames, FPS, rng=rng, jitter_s=jitter)
    nuisance = Nuisance.draw(rng)
    frames = face_model(spk.face, job.size).render(poses, nuisance, rng)

    rel = Path(job.split) / job.speaker_id / job.utt_id
    write_mp4(out / rel.with_suffix(".mp4"), frames, padded, SAMPLE_RATE, FPS)
    words = []
    for w, text in enumerate(sentence.words):
        segs = [p for p in phones if p.word == w]
        words.append({"word": text, "start": round(segs[0].start, 4), "end": round(segs[-1].end, 4)})
    transcript: dict[str, Any] = {
        "utt_id": job.utt_id,
        "speaker": job.speaker_id,
        "split": job.split,
        "text": sentence.text,
        "spoken_text": " ".join(sentence.spoken_words),
        "sentence_index": job.sentence_index,
        "seed": job.seed,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "n_frames": n_frames,
        "duration": duration,
        "words": words,
        "phones": [{**p.to_dict(), "start": round(p.start, 5), "end": round(p.end, 5)} for p in phones],
        "voice": {"engine": spk.voice.engine, "name": spk.voice.name, "pitch": spk.voice.pitch},
        "nuisance": {
            "tempo": round(tempo, 4),
            "lead_s": round(float(lead), 4),
            "av_offset_s": round(av_offset, 4),
            "articulation_jitter_s": jitter,
            **{k: v for k, v in vars(nuisance).items()},
        },
        "mouth": {"params": list(MOUTH_PARAMS), "frames": np.round(poses, 3).tolist()},
    }
    write_json(out / rel.with_suffix(".json"), transcript)
    return transcript


def _done(job: UtteranceJob, out: Path) -> bool:
    rel = Path(job.split) / job.speaker_id / job.utt_id
    mp4, js = out / rel.with_suffix(".mp4"), out / rel.with_suffix(".json")
    if not (mp4.exists() and js.exists()):
        return False
    try:
        data = read_json(js)
    except ValueError:
        return False
    return bool(data.get("seed") == job.seed and data.get("sentence_index") == job.sentence_index)


def _run_job(args: tuple[UtteranceJob, str]) -> str:
    job, out = args
    make_utterance(job, Path(out))
    return job.utt_id


def make_corpus(
    out: Path | str,
    speakers: int | list[str],
    utterances: int,
    seed: int,
    *,
    workers: int = 1,
    size: int = FRAME_SIZE,
    unseen_speakers: int = 1,
    test_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate a corpus into `out` (resumable: finished utterances of the same seed are kept).

    Returns the manifest, also written to `{out}/corpus.json`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan_corpus(speakers, utterances, seed, unseen_speakers, test_fraction, size)
    todo = [j for j in jobs if not _done(j, out)]
    done = len(jobs) - len(todo)
    if progress:
        progress(done, len(jobs))
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            make_utterance(job, out)
            done += 1
            if progress:
                progress(done, len(jobs))
    else:
        # spawn: the engines keep per-process state (libespeak-ng, onnxruntime) that must not be forked.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for _ in pool.map(_run_job, [(j, str(out)) for j in todo], chunksize=1):
                done += 1
                if progress:
                    progress(done, len(jobs))
    chosen = select_speakers(speakers)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "seed": seed,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "frame_size": size,
        "utterances_per_speaker": utterances,
        "speakers": [s.to_dict() for s in chosen],
        "unseen_speakers": sorted({j.speaker_id for j in jobs if j.split == "test_unseen_speaker"}),
        "splits": {
            split: [
                {
                    "utt_id": j.utt_id,
                    "speaker": j.speaker_id,
                    "text": Sentence.from_index(j.sentence_index).text,
                }
                for j in jobs
                if j.split == split
            ]
            for split in SPLITS
        },
    }
    write_manifest(out, manifest)
    return manifest
