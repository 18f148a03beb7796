"""Stage C's devices on CPU: batches from DataLoader workers equal the in-process ones, and a bf16 autocast
step (CPU autocast, as a GPU's) trains."""

from __future__ import annotations

from pathlib import Path

import torch

from diffv2s.checkpoints.store import load_checkpoint
from diffv2s.model import build_initial_model
from lab.training.cache import CacheSet
from lab.training.denoiser_stage import DenoiserStage
from lab.training.devices import Placement, autocast, resolve_precision
from lab.training.features import FeatureSet


def _stage(run: Path, **kwargs: object) -> DenoiserStage:
    cfg = load_checkpoint(run / "diffv2s-paper.pt").config
    train = FeatureSet(CacheSet(run / "cache" / "train", cfg.video), run / "features" / "train")
    return DenoiserStage(build_initial_model(cfg, 0), train, None, batch_size=2, **kwargs)  # type: ignore[arg-type]


def test_loader_workers_build_the_same_batches(paper_run: Path) -> None:
    inline = _stage(paper_run)
    workers = _stage(paper_run, loader_workers=1)
    try:
        for step in (5, 6, 9):  # in order, then a jump that restarts the stream
            a, b = inline.feed.get(step), workers.feed.get(step)
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (step, key)
    finally:
        workers.feed.close()


def test_bf16_autocast_trains_on_cpu(paper_run: Path) -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.zeros(2, 2).matmul(torch.zeros(2, 2)).dtype == torch.bfloat16
    stage = _stage(paper_run, precision="bf16")
    before = [p.detach().clone() for p in stage.denoiser.parameters()]
    losses = [stage.train_step(step, 1e-3) for step in range(2)]
    assert all(torch.isfinite(torch.tensor(list(x.values()))).all() for x in losses)
    assert all(p.dtype == torch.float32 for p in stage.denoiser.parameters())  # weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.denoiser.parameters(), strict=True))
    assert Placement().precision == "fp32"
