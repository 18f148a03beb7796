"""Fixtures of the paper's training path: a tiny LRS3 tree cut from the real carphone clip with synthetic
speech, and a tiny AV-HuBERT checkpoint in the official fairseq format."""

from __future__ import annotations

import importlib
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from lab.corpus.lrs3 import WordTiming, format_lrs3_text
from tests.fixtures.videos import carphone_path, read_rgb_frames

AUDIO_RATE = 16000


def write_talking_clip(path: Path, frames: list[np.ndarray], pitch: float, seed: int) -> None:
    """An mp4 like an LRS3 clip: the frames at 25 fps with an AAC track of a buzzy, voice-like tone."""
    seconds = len(frames) / 25.0
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    rng = np.random.default_rng(seed)
    wave = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    wave = (0.2 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))).astype(
        np.float32
    )
    with av.open(str(path), mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=Fraction(25))
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for start in range(0, len(wave), 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts = start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))


def make_lrs3_tree(root: Path, speakers: int = 2, clips: int = 2, frames: int = 30) -> Path:
    """`{trainval,test}/{speaker}/{NNNNN}.mp4 + .txt`: windows of the carphone clip (a real face), each
    speaker with its own pitch; one test clip per speaker. Returns root."""
    source = read_rgb_frames(carphone_path())
    n = 0
    for s in range(speakers):
        for c in range(clips + 1):
            split = "test" if c == clips else "trainval"
            start = (7 * n) % (len(source) - frames)
            path = root / split / f"spk{s:02d}" / f"{c + 1:05d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_talking_clip(path, source[start : start + frames], 110.0 + 60.0 * s, seed=n)
            words = [WordTiming("hello", 0.1, 0.5), WordTiming("there", 0.6, 1.0)]
            path.with_suffix(".txt").write_text(format_lrs3_text("hello there", words))
            n += 1
    return root


@pytest.fixture(scope="session")
def lrs3_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lrs3_tree(tmp_path_factory.mktemp("lrs3"))


FAIRSEQ_LIKE = textwrap.dedent(
    """
    class Dictionary:
        def __init__(self, symbols):
            self.symbols = symbols

    class AVHubertConfig:
        def __init__(self, **kw):
            self.__dict__.update(kw)
    """
)


def write_official_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny AV-HuBERT pretraining checkpoint in the official layout (official key names from the table
    of the loader's tests, a pickled foreign config and dictionary that need a module the loader never
    sees); returns its `model` state dict."""
    from tests.diffv2s.test_avhubert_loader import official_key_shapes, random_state_dict

    sd = random_state_dict(official_key_shapes(), seed=seed)
    pkg = path.parent / f"{path.stem}-pkg"
    (pkg / "fairseq_like").mkdir(parents=True)
    (pkg / "fairseq_like" / "__init__.py").write_text(FAIRSEQ_LIKE)
    sys.path.insert(0, str(pkg))
    try:
        mod = importlib.import_module("fairseq_like")
        cfg = mod.AVHubertConfig(_name="av_hubert", encoder_attention_heads=4, layer_norm_first=True)
        torch.save(
            {
                "cfg": {"model": cfg},
                "model": sd,
                "optimizer_history": [{"num_updates": 1}],
                "task_state": {"dictionaries": [mod.Dictionary(["a", "b"])]},
            },
            path,
        )
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("fairseq_like", None)
        importlib.invalidate_caches()
    return sd


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("avhubert") / "tiny_vox_iter5.pt"
    return path, write_official_checkpoint(path)


TINY = ["--override", "denoiser.layers=1", "denoiser.width=32", "denoiser.heads=2"]


def paper_args(tree: Path, avhubert: Path, out: Path, *extra: str) -> list[str]:
    """`diffv2s train` arguments of the tiny paper-path run (one process, CPU)."""
    return [
        "--preset", "paper", "--avhubert", str(avhubert), "--data", str(tree), "--out", str(out),
        "--workers", "1", "--threads", "1", "--speaker-steps", "2", "--denoiser-steps", "3",
        "--speaker-batch", "2", "--denoiser-batch", "2", "--log-every-s", "0", "--no-progress", *TINY, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def paper_run(
    lrs3_tree: Path,
    official_checkpoint: tuple[Path, dict[str, torch.Tensor]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A finished tiny paper-path run folder (3 denoiser steps, global batch 2, one process)."""
    from lab.training.cli import train_main

    out = tmp_path_factory.mktemp("paper") / "run"
    assert train_main(paper_args(lrs3_tree, official_checkpoint[0], out)) == 0
    return out
