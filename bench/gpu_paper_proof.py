"""GPU proof of the paper's training path, sized for one 10-minute call of the device tool.

    python -m bench.gpu_paper_proof --device cuda [--out bench/results/gpu_paper_proof.json]
    python -m bench.gpu_paper_proof --device cpu --tiny      # smoke check (a test runs it)

Measures, on random weights and synthetic inputs (timings do not depend on the weights' values):
- stage C training (paper denoiser 8 x 512 x 4 on AV-HuBERT Large features, 1024-d): steps/s and peak
  memory at fp32 and bf16 autocast, global batch `--batch` clips of `--frames` video frames (6 s);
- the denoiser at inference: batch 1 vs 8 items/s, fp32 vs bf16 step time;
- the visual encoder (AV-HuBERT Large, frozen) + 4 denoiser steps on a 10 s clip: real-time factor
  (the vocoder is not included);
- the GPU count (a 2-process DDP step needs 2 GPUs: `torchrun --nproc-per-node 2 -m lab.training.cli`).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffv2s.config import DenoiserConfig, EncoderConfig, preset
from diffv2s.diffusion.schedule import diffusion_loss, make_schedule
from diffv2s.nn.avhubert import AVHubertEncoder
from diffv2s.nn.denoiser import Denoiser

RESULTS = Path(__file__).resolve().parent / "results"
TINY_DENOISER = DenoiserConfig(layers=1, width=32, heads=2)
TINY_ENCODER = EncoderConfig(name="tiny", embed_dim=32, layers=1, heads=2, ffn_dim=64, resnet_width=4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def train_steps(
    denoiser: Denoiser,
    visual_dim: int,
    batch: int,
    frames: int,
    device: torch.device,
    bf16: bool,
    repeats: int,
) -> dict[str, float]:
    cfg = preset("paper")
    n_mel = int(round(frames * cfg.audio.mel_rate / cfg.video.fps))
    schedule = make_schedule(cfg.diffusion)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    mel = torch.randn(batch, cfg.audio.n_mels, n_mel, device=device)
    mask = torch.ones(batch, n_mel, dtype=torch.bool, device=device)
    visual = torch.randn(batch, frames, visual_dim, device=device)
    vmask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    spk = torch.randn(batch, 256, device=device)
    drop = torch.zeros(batch, dtype=torch.bool, device=device)

    def step() -> None:
        with _autocast(device, bf16):
            loss = diffusion_loss(
                denoiser, mel, mask, schedule, cond=(visual, vmask, spk, mask, drop)
            ).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(step, device, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": seconds, "steps_per_s": 1.0 / seconds, "clips_per_s": batch / seconds, "peak_gib": peak}


@torch.inference_mode()
def denoise_step(
    denoiser: Denoiser,
    visual_dim: int,
    batch: int,
    frames: int,
    device: torch.device,
    bf16: bool,
    repeats: int,
) -> float:
    cfg = preset("paper")
    n_mel = int(round(frames * cfg.audio.mel_rate / cfg.video.fps))
    x = torch.randn(batch, cfg.audio.n_mels, n_mel, device=device)
    t = torch.full((batch,), 500.0, device=device)
    visual = torch.randn(batch, frames, visual_dim, device=device)
    vmask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    spk = torch.randn(batch, 256, device=device)
    mask = torch.ones(batch, n_mel, dtype=torch.bool, device=device)

    def call() -> None:
        with _autocast(device, bf16):
            denoiser(x, t, visual, vmask, spk, mask)

    return _timed(call, device, repeats)


@torch.inference_mode()
def clip_rtf(
    encoder: AVHubertEncoder, denoiser: Denoiser, seconds: float, device: torch.device, bf16: bool
) -> dict[str, float]:
    """Encoder on a `seconds` clip of 88x88 ROIs + 4 denoiser steps (the shipped DDIM default): RTF."""
    frames = int(seconds * 25)
    video = torch.randn(1, 1, frames, 88, 88, device=device)
    with _autocast(device, bf16):
        enc_s = _timed(lambda: encoder(video, None, None), device, 3, warmup=1)
        feats = encoder(video, None, None).features.float()
    steps_s = 4 * denoise_step(denoiser, feats.shape[-1], 1, frames, device, bf16, 3)
    return {"encoder_s": enc_s, "denoiser_4_steps_s": steps_s, "rtf": (enc_s + steps_s) / seconds}


def run(device_name: str, tiny: bool, batch: int, frames: int, repeats: int) -> dict[str, Any]:
    device = torch.device(device_name)
    cfg = preset("paper")
    enc_cfg = TINY_ENCODER if tiny else cfg.encoder
    den_cfg = TINY_DENOISER if tiny else cfg.denoiser
    visual_dim = enc_cfg.embed_dim
    denoiser = Denoiser(
        den_cfg, cfg.audio.n_mels, visual_dim, frame_ratio=cfg.audio.mel_rate / cfg.video.fps
    ).to(device)
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "tiny": tiny,
        "denoiser": dataclasses.asdict(den_cfg),
        "encoder": enc_cfg.name,
        "batch": batch,
        "frames": frames,
        "train": {},
        "inference": {},
    }
    for name, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and not bf16_ok:
            continue
        out["train"][name] = train_steps(denoiser, visual_dim, batch, frames, device, bf16, repeats)
        denoiser.eval()
        one = denoise_step(denoiser, visual_dim, 1, frames, device, bf16, repeats)
        eight = denoise_step(denoiser, visual_dim, 8, frames, device, bf16, repeats)
        out["inference"][name] = {
            "step_s_batch1": one,
            "step_s_batch8": eight,
            "items_per_s_batch1": 1 / one,
            "items_per_s_batch8": 8 / eight,
        }
        denoiser.train()
    encoder = AVHubertEncoder(enc_cfg).to(device).eval()
    out["clip_10s"] = clip_rtf(encoder, denoiser.eval(), 2.0 if tiny else 10.0, device, bf16_ok)
    out["ddp_2_process"] = (
        "2 GPUs here: run torchrun --nproc-per-node 2 -m lab.training.cli ... for the DDP step"
        if out["gpus"] >= 2
        else f"not measured: {out['gpus']} GPU(s) on this machine"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_paper_proof", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny dims: a CPU smoke check of the script")
    p.add_argument("--batch", type=int, default=None, help="clips per training step (default 16; tiny 2)")
    p.add_argument("--frames", type=int, default=None, help="video frames per clip (default 150; tiny 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 10; tiny 2)")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_paper_proof.json")
    args = p.parse_args(argv)
    batch = args.batch or (2 if args.tiny else 16)
    frames = args.frames or (10 if args.tiny else 150)
    repeats = args.repeats or (2 if args.tiny else 10)
    result = run(args.device, args.tiny, batch, frames, repeats)
    print(
        f"device {result['device']} (GPUs: {result['gpus']}), torch {result['torch']}, tiny={result['tiny']}"
    )
    print(f"stage C training, batch {batch} x {frames} frames:")
    for name, row in result["train"].items():
        print(
            f"  {name:<5} {row['steps_per_s']:8.2f} steps/s {row['clips_per_s']:8.1f} clips/s  peak {row['peak_gib']:.2f} GiB"
        )
    print("denoiser inference step (one call):")
    for name, row in result["inference"].items():
        print(
            f"  {name:<5} batch 1 {row['step_s_batch1'] * 1e3:8.2f} ms  batch 8 {row['step_s_batch8'] * 1e3:8.2f} ms "
            f"({row['items_per_s_batch8'] / row['items_per_s_batch1']:.2f}x items/s)"
        )
    clip = result["clip_10s"]
    print(
        f"clip: encoder {clip['encoder_s']:.3f} s + 4 denoiser steps {clip['denoiser_4_steps_s']:.3f} s, RTF {clip['rtf']:.3f} (no vocoder)"
    )
    print(f"DDP: {result['ddp_2_process']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
