"""The paper's path on CPU with tiny dims: an official-format AV-HuBERT checkpoint -> `diffv2s train
--preset paper --avhubert` on a tiny LRS3 tree -> a checkpoint that synthesizes, whose encoder is the
official file's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffv2s.checkpoints.store import load_checkpoint
from diffv2s.pipeline import Synthesizer
from diffv2s.schemas import SynthesisParams, SynthesisRequest
from lab.training.cli import train_main
from tests.fixtures.videos import carphone_path
from tests.lab.conftest import paper_args


def test_the_encoder_is_the_official_file_frozen(
    paper_run: Path, official_checkpoint: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    ckpt = load_checkpoint(paper_run / "diffv2s-paper.pt")
    _, official = official_checkpoint
    heads = ("final_proj", "label_embs_concat", "mask_emb")
    compared = 0
    for key, value in official.items():
        if key.startswith(heads):
            continue
        stored = ckpt.state_dict[f"encoder.{key}"]
        # The checkpoint is float16: the official weights rounded once, nothing trained.
        expected = value.half() if value.is_floating_point() else value
        assert torch.equal(stored.to(expected.dtype), expected), key
        compared += 1
    assert compared > 100
    assert ckpt.config.encoder.embed_dim == 32 and ckpt.config.denoiser.width == 32
    assert ckpt.meta["avhubert"]["file"] == "tiny_vox_iter5.pt"
    assert not (paper_run / "encoder" / "state.pt").exists()  # stage A trained nothing


def test_features_are_cached_once_per_clip_in_shards(paper_run: Path) -> None:
    info = json.loads((paper_run / "run.json").read_text())
    assert info["features"]["encoder"] and info["budgets"]["encoder"] == 0.0
    for split in ("train", "val"):
        shards = sorted((paper_run / "features" / split).glob("shard-*"))
        assert [s.name for s in shards] == [
            s.name for s in sorted((paper_run / "cache" / split).glob("shard-*"))
        ]
        assert np.load(shards[0] / "features.npy").shape[1] == 32


def test_the_checkpoint_synthesizes_a_real_video(paper_run: Path) -> None:
    synth = Synthesizer.load(paper_run / "diffv2s-paper.pt")
    (result,) = synth.synthesize_batch(
        [SynthesisRequest(video=carphone_path(), params=SynthesisParams(steps=2))]
    )
    assert result.error is None
    assert result.waveform is not None and np.isfinite(result.waveform).all()


def test_resume_refuses_another_avhubert_file(paper_run: Path, lrs3_tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    other.write_bytes(b"x" * 10)
    assert train_main(paper_args(lrs3_tree, other, paper_run, "--resume")) == 2
