"""Denoiser forward speed per second of audio, `small` and `paper`, batch 1 / 4 / 16, with achieved
GFLOP/s beside a plain fp32 matmul GFLOP/s measured in the same run (the roofline this CPU reaches).

Run: `.venv/bin/python -m bench.bench_denoiser` (prints a table, writes bench/results/denoiser.json).
FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the real forward (matmuls/attention).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffv2s.config import preset
from diffv2s.nn.denoiser import Denoiser

RESULTS = Path(__file__).resolve().parent / "results"
AUDIO_SECONDS = 4.0


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _time(fn: Any, min_seconds: float = 1.0) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t0 >= min_seconds and n >= 2:
            return (time.perf_counter() - t0) / n


def run() -> dict:
    torch.manual_seed(0)
    peak = matmul_gflops()
    rows = []
    for name in ("small", "paper"):
        cfg = preset(name)
        net = Denoiser(
            cfg.denoiser,
            n_mels=cfg.audio.n_mels,
            visual_dim=cfg.encoder.embed_dim,
            speaker_dim=cfg.speaker.embed_dim,
            frame_ratio=cfg.audio.mel_rate / cfg.video.fps,
        ).eval()
        t_mel = round(AUDIO_SECONDS * cfg.audio.mel_rate)
        t_vid = round(AUDIO_SECONDS * cfg.video.fps)
        for batch in (1, 4, 16):
            x = torch.randn(batch, cfg.audio.n_mels, t_mel)
            t = torch.full((batch,), 500.0)
            vis = torch.randn(batch, t_vid, cfg.encoder.embed_dim)
            vmask = torch.ones(batch, t_vid, dtype=torch.bool)
            spk = torch.nn.functional.normalize(torch.randn(batch, cfg.speaker.embed_dim), dim=1)
            mask = torch.ones(batch, t_mel, dtype=torch.bool)

            def step(x=x, t=t, vis=vis, vmask=vmask, spk=spk, mask=mask, net=net) -> None:
                with torch.inference_mode():
                    net(x, t, vis, vmask, spk, mask)

            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
            seconds = _time(step)
            audio = batch * AUDIO_SECONDS
            rows.append(
                {
                    "preset": name,
                    "batch": batch,
                    "ms_per_forward": seconds * 1e3,
                    "audio_s_per_s": audio / seconds,
                    "gflops": flops / seconds / 1e9,
                    "fraction_of_matmul": flops / seconds / 1e9 / peak,
                }
            )
    print(f"plain fp32 matmul 1024^3: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"{'preset':<7}{'batch':>6}{'ms/fwd':>10}{'audio s/s':>11}{'GFLOP/s':>9}{'of matmul':>11}")
    for r in rows:
        print(
            f"{r['preset']:<7}{r['batch']:>6}{r['ms_per_forward']:>10.1f}{r['audio_s_per_s']:>11.1f}"
            f"{r['gflops']:>9.1f}{r['fraction_of_matmul']:>10.0%}"
        )
    out = {"matmul_gflops": peak, "audio_seconds": AUDIO_SECONDS, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "denoiser.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run()
