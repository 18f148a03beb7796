"""Decode every training utterance once: mouth ROI frames, log-mel, GE2E speaker embedding, transcript.

Shards live under `{run}/cache/{split}/shard-NNNNN/`:

    frames.npy   uint8 [sum T, 88, 88]      mouth ROIs before normalisation (lossless: the crops are uint8)
    mel.npy      float16 [sum T_mel, n_mels] log-mel, T_mel = round(T * mel_rate / fps) per utterance
    ge2e.npy     float32 [N, 256]          resemblyzer GE2E embedding of the utterance's audio
    items.json   per utterance: utt_id, speaker, text, frame and mel offsets, and where the corpus has
                 them (synthetic) the phone segments [[phone, start s, end s], ...] on the video's clock

Arrays are memory-mapped on load, so a cache larger than memory (LRS3) still trains. A shard is written
to a temporary folder and renamed, so an interrupted cache step resumes at the first missing utterance.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffv2s.audio import mel_spectrogram, read_media_audio
from diffv2s.config import AudioConfig, VideoConfig
from diffv2s.errors import DiffV2SError, InputError
from lab.corpus.phones import PHONES, PhoneSegment
from lab.corpus.writer import read_json
from lab.training.data import Utterance

SHARD_SIZE = 64
# Class index of each canonical phone for stage A's phone head; -1 marks frames without a label.
PHONE_CLASSES: tuple[str, ...] = tuple(sorted(PHONES))
NO_PHONE = -1


@dataclass
class CachedUtterance:
    """frames: uint8 [T, 88, 88]; mel: float16 [T_mel, n_mels]; ge2e: float32 [256];
    phones: (phone, start s, end s) segments, empty when the corpus has no phone timings."""

    utt_id: str
    speaker: str
    text: str
    frames: np.ndarray
    mel: np.ndarray
    ge2e: np.ndarray
    phones: list[tuple[str, float, float]] = field(default_factory=list)


def read_phones(transcript: Path | None) -> list[tuple[str, float, float]]:
    """The phone segments of a synthetic-corpus transcript ([] without one)."""
    if transcript is None:
        return []
    segments = (PhoneSegment.from_dict(p) for p in read_json(Path(transcript)).get("phones", []))
    return [(s.phone, s.start, s.end) for s in segments]


def phone_labels(segments: Sequence[Sequence[Any]], n: int, rate: float) -> np.ndarray:
    """Class index (`PHONE_CLASSES`) of the phone sounding at the centre of each of n frames at `rate` Hz:
    int64 [n]; NO_PHONE where no segment covers the frame or the phone is not in the inventory."""
    labels = np.full(n, NO_PHONE, dtype=np.int64)
    centres = (np.arange(n) + 0.5) / rate
    for phone, start, end in segments:
        if phone in PHONE_CLASSES:
            labels[(centres >= float(start)) & (centres < float(end))] = PHONE_CLASSES.index(phone)
    return labels


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream of a media file as float32 mono [N] at `sample_rate`."""
    try:
        return read_media_audio(path, sample_rate)[0]
    except ValueError as exc:
        raise InputError(f"{path} has no audio track; training needs the speech of every clip.") from exc


def mel_for_frames(wav: np.ndarray, n_frames: int, audio: AudioConfig, fps: float) -> np.ndarray:
    """Log-mel of the audio under `n_frames` video frames: float32 [round(n_frames * mel_rate / fps), n_mels].

    The audio is cut or zero-padded to exactly n_frames / fps seconds first, so mel frame j lines up with
    video time (j + 0.5) / mel_rate as the denoiser assumes.
    """
    n_samples = int(round(n_frames / fps * audio.sample_rate))
    wav = np.asarray(wav[:n_samples], dtype=np.float32)
    if len(wav) < n_samples:
        wav = np.pad(wav, (0, n_samples - len(wav)))
    n_mel = max(1, int(round(n_frames * audio.mel_rate / fps)))
    mel = mel_spectrogram(torch.from_numpy(wav), audio)[0].T.numpy()  # [N // hop, n_mels]
    if len(mel) < n_mel:
        silence = np.full((n_mel - len(mel), mel.shape[1]), np.log(audio.log_clamp), np.float32)
        mel = np.concatenate([mel, silence])
    return np.ascontiguousarray(mel[:n_mel], dtype=np.float32)


def roi_to_uint8(frames: np.ndarray, video: VideoConfig) -> np.ndarray:
    """Normalised ROI float32 [T, H, W] -> the uint8 crops it was made from."""
    return np.clip(np.round((frames * video.std + video.mean) * 255.0), 0, 255).astype(np.uint8)


def roi_from_uint8(frames: np.ndarray, video: VideoConfig) -> np.ndarray:
    """uint8 crops [..., H, W] -> normalised float32, as `extract_mouth_roi` returns them."""
    return ((frames.astype(np.float32) / 255.0 - video.mean) / video.std).astype(np.float32)


class UtteranceDecoder:
    """Decodes one utterance; holds the GE2E encoder (loaded once per process)."""

    def __init__(self, audio: AudioConfig, video: VideoConfig) -> None:
        from lab.training.ge2e import GE2EEmbedder

        self.audio = audio
        self.video = video
        self.ge2e = GE2EEmbedder()

    def __call__(self, utt: Utterance) -> CachedUtterance:
        from diffv2s.video.mouth_roi import extract_mouth_roi

        roi = extract_mouth_roi(utt.video, self.video)
        wav = read_audio(utt.video, self.audio.sample_rate)
        mel = mel_for_frames(wav, roi.n_frames, self.audio, self.video.fps)
        n_samples = int(round(roi.n_frames / self.video.fps * self.audio.sample_rate))
        ge2e = self.ge2e.embed(wav[:n_samples], self.audio.sample_rate)
        return CachedUtterance(
            utt.utt_id,
            utt.speaker,
            utt.text,
            roi_to_uint8(roi.frames, self.video),
            mel.astype(np.float16),
            ge2e,
            read_phones(utt.transcript),
        )


# ----------------------------------------------------------------------------------------------------------
# Shards on disk.


def write_shard(path: Path, items: Sequence[CachedUtterance]) -> None:
    """Write one shard folder atomically (temp folder + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = []
    f0 = m0 = 0
    for it in items:
        f1, m1 = f0 + len(it.frames), m0 + len(it.mel)
        entry: dict[str, Any] = {
            "utt_id": it.utt_id,
            "speaker": it.speaker,
            "text": it.text,
            "frames": [f0, f1],
            "mel": [m0, m1],
        }
        if it.phones:
            entry["phones"] = [[p, round(a, 5), round(b, 5)] for p, a, b in it.phones]
        meta.append(entry)
        f0, m0 = f1, m1
    np.save(tmp / "frames.npy", np.concatenate([it.frames for it in items]))
    np.save(tmp / "mel.npy", np.concatenate([it.mel for it in items]))
    np.save(tmp / "ge2e.npy", np.stack([it.ge2e for it in items]).astype(np.float32))
    (tmp / "items.json").write_text(json.dumps(meta))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def shard_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.glob("shard-*") if p.is_dir() and not p.name.endswith(".tmp"))


class CacheSet:
    """All cached utterances of one split, memory-mapped. Index i runs over utterances in shard order."""

    def __init__(self, split_dir: Path, video: VideoConfig) -> None:
        self.video = video
        self.split_dir = Path(split_dir)
        self.items: list[dict[str, Any]] = []
        self._frames: list[np.ndarray] = []
        self._mel: list[np.ndarray] = []
        ge2e: list[np.ndarray] = []
        for k, shard in enumerate(shard_dirs(split_dir)):
            self._frames.append(np.load(shard / "frames.npy", mmap_mode="r"))
            self._mel.append(np.load(shard / "mel.npy", mmap_mode="r"))
            ge2e.append(np.load(shard / "ge2e.npy"))
            for j, meta in enumerate(json.loads((shard / "items.json").read_text())):
                self.items.append({**meta, "shard": k, "row": j})
        if not self.items:
            raise InputError(
                f"no cached utterances under {split_dir}; run `diffv2s train --stage cache` first."
            )
        self.ge2e_all = np.concatenate(ge2e).astype(np.float32)
        self.speakers = sorted({it["speaker"] for it in self.items})
        self.speaker_index = np.array([self.speakers.index(it["speaker"]) for it in self.items])
        self.n_frames = np.array([it["frames"][1] - it["frames"][0] for it in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def frames(self, i: int) -> np.ndarray:
        """uint8 [T, 88, 88] (a memory-mapped view)."""
        it = self.items[i]
        return self._frames[it["shard"]][it["frames"][0] : it["frames"][1]]

    def roi(self, i: int) -> np.ndarray:
        """Normalised float32 [T, 88, 88], as the encoder takes it."""
        return roi_from_uint8(self.frames(i), self.video)

    def mel(self, i: int) -> np.ndarray:
        """float32 [T_mel, n_mels]."""
        it = self.items[i]
        return np.asarray(self._mel[it["shard"]][it["mel"][0] : it["mel"][1]], dtype=np.float32)

    def n_mel(self, i: int) -> int:
        """Mel frames of utterance i (without reading them)."""
        m0, m1 = self.items[i]["mel"]
        return int(m1 - m0)

    def ge2e(self, i: int) -> np.ndarray:
        """float32 [256], unit norm."""
        return self.ge2e_all[i]

    def phone_labels(self, i: int, rate: float) -> np.ndarray:
        """int64 [T * rate / fps] phone class per frame at `rate` Hz (all NO_PHONE without timings)."""
        n = int(round(int(self.n_frames[i]) * rate / self.video.fps))
        return phone_labels(self.items[i].get("phones", []), n, rate)

    @property
    def has_phones(self) -> bool:
        return any("phones" in it for it in self.items)

    def frame_offsets(self) -> np.ndarray:
        """[N + 1] start of each utterance in the concatenation of all frames (for per-frame feature files)."""
        return np.concatenate([[0], np.cumsum(self.n_frames)])

    def mel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and std of the log-mel over the split: float32 [n_mels] each."""
        total = np.zeros(0)
        sq = np.zeros(0)
        count = 0
        for mel in self._mel:
            m = np.asarray(mel, dtype=np.float64)
            total = m.sum(0) if count == 0 else total + m.sum(0)
            sq = (m**2).sum(0) if count == 0 else sq + (m**2).sum(0)
            count += len(m)
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean**2, 1e-6))
        return mean.astype(np.float32), std.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# The cache step.

_WORKER: UtteranceDecoder | None = None


def _init_worker(audio: AudioConfig, video: VideoConfig) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = UtteranceDecoder(audio, video)


def _decode_in_worker(utt: Utterance) -> CachedUtterance | str:
    assert _WORKER is not None
    try:
        return _WORKER(utt)
    except DiffV2SError as exc:
        return f"{utt.utt_id}: {exc.code}: {exc.message}"


def _decode_all(
    todo: Sequence[Utterance], audio: AudioConfig, video: VideoConfig, workers: int
) -> Iterator[CachedUtterance | str]:
    if workers <= 1:
        decoder = UtteranceDecoder(audio, video)
        for utt in todo:
            try:
                yield decoder(utt)
            except DiffV2SError as exc:
                yield f"{utt.utt_id}: {exc.code}: {exc.message}"
        return
    # spawn: mediapipe and torch hold threads that a fork would copy in a broken state.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(audio, video))
    # A small window of work in flight keeps the order and lets a stop request return quickly.
    pending: deque[Future[CachedUtterance | str]] = deque()
    queue = iter(todo)
    try:
        for utt in queue:
            pending.append(pool.submit(_decode_in_worker, utt))
            if len(pending) >= 2 * workers:
                break
        while pending:
            out = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(_decode_in_worker, nxt))
            yield out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_cache(
    utterances: Sequence[Utterance],
    split_dir: Path,
    audio: AudioConfig,
    video: VideoConfig,
    workers: int = 1,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Decode the utterances not cached yet into shards under `split_dir`.

    Resumable: utterances found in existing shards (or recorded as failed) are skipped. When
    `should_stop()` turns true the utterances decoded so far are flushed to a shard and it returns.
    Returns {"cached": n, "failed": [messages], "complete": bool, "decoded": clips decoded by this call
    (refused ones included), "seconds": its wall time}.
    """
    t0 = time.perf_counter()
    split_dir.mkdir(parents=True, exist_ok=True)
    failed_path = split_dir / "failed.json"
    failed: list[str] = json.loads(failed_path.read_text()) if failed_path.exists() else []
    done: set[str] = {m.split(":", 1)[0] for m in failed}
    shards = shard_dirs(split_dir)
    for shard in shards:
        done.update(m["utt_id"] for m in json.loads((shard / "items.json").read_text()))
    todo = [u for u in utterances if u.utt_id not in done]
    decoded = 0
    next_shard = len(shards)
    n_total, n_done = len(utterances), len(utterances) - len(todo)
    if progress:
        progress(n_done, n_total)
    buffer: list[CachedUtterance] = []

    def flush() -> None:
        nonlocal next_shard, buffer
        if buffer:
            write_shard(split_dir / f"shard-{next_shard:05d}", buffer)
            next_shard += 1
            buffer = []
        failed_path.write_text(json.dumps(failed, indent=0))

    stopped = False
    if todo:
        results = _decode_all(todo, audio, video, workers)
        for out in results:
            if isinstance(out, str):
                failed.append(out)
            else:
                buffer.append(out)
            n_done += 1
            decoded += 1
            if progress:
                progress(n_done, n_total)
            if len(buffer) >= SHARD_SIZE:
                flush()
            if should_stop():
                stopped = True
                break
        close = getattr(results, "close", None)
        if close is not None:
            close()
    flush()
    cached = sum(len(json.loads((s / "items.json").read_text())) for s in shard_dirs(split_dir))
    return {
        "cached": cached,
        "failed": failed,
        "complete": not stopped,
        "decoded": decoded,
        "seconds": time.perf_counter() - t0,
    }


def refusal_counts(failed: Sequence[str]) -> dict[str, int]:
    """How many clips were refused for each reason (the error code of `utt_id: code: message`)."""
    counts: dict[str, int] = {}
    for message in failed:
        parts = message.split(": ", 2)
        code = parts[1] if len(parts) > 2 else "error"
        counts[code] = counts.get(code, 0) + 1
    return counts
