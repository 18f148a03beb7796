"""HiFi-GAN V1 (universal weights) in torch vs ONNX Runtime float32 on the CPU: seconds per call and the
real-speech vocoder ceiling of each, in one run.

Run: `.venv/bin/python -m bench.bench_vocoder` (prints a table, writes bench/results/vocoder.json).
Input: CMU ARCTIC a0007 (the recording shipped in pysptk, as in the README) -> our log-mel -> each vocoder;
STOI of the output against the recording at its own 16 kHz. Speed: the same mel cut or padded to the
carphone clip's 4.004 s (345 frames), the two vocoders called in turn, median of `repeats`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from pystoi import stoi
from scipy.signal import resample_poly

from diffv2s.audio import load_wav, mel_spectrogram
from diffv2s.config import AudioConfig, VocoderConfig, preset
from diffv2s.engines.ort_backend import ort_cpu_vocoder
from diffv2s.nn.hifigan import Vocoder, make_vocoder

RESULTS = Path(__file__).resolve().parent / "results"
CARPHONE_FRAMES = 345  # 4.004 s at 22 050 Hz / hop 256


def arctic_wav() -> Path:
    spec = importlib.util.find_spec("pysptk")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "example_audio_data" / "arctic_a0007.wav"


def ceiling_stoi(wav: torch.Tensor) -> float:
    """STOI of a 22.05 kHz vocoder output [1, N] against the 16 kHz recording."""
    reference = load_wav(arctic_wav(), 16000)
    synthesized = resample_poly(wav[0].numpy().astype(np.float64), 320, 441)
    n = min(len(reference), len(synthesized))
    return float(stoi(reference[:n], synthesized[:n], 16000, extended=False))


def run(repeats: int = 7) -> dict:
    audio = AudioConfig()
    torch_voc = make_vocoder(VocoderConfig())
    assert isinstance(torch_voc, Vocoder)
    vocoders = {
        "torch": torch_voc,
        "onnxruntime-cpu": ort_cpu_vocoder(torch_voc.generator, preset("small")),
    }
    mel = mel_spectrogram(torch.from_numpy(load_wav(arctic_wav(), audio.sample_rate)), audio)
    outs = {name: voc(mel) for name, voc in vocoders.items()}
    silence = float(np.log(audio.log_clamp))
    clip = torch.nn.functional.pad(mel, (0, max(0, CARPHONE_FRAMES - mel.shape[-1])), value=silence)
    clip = clip[..., :CARPHONE_FRAMES].contiguous()
    times: dict[str, list[float]] = {name: [] for name in vocoders}
    for voc in vocoders.values():
        voc(clip)
    for _ in range(repeats):
        for name, voc in vocoders.items():
            t0 = time.perf_counter()
            voc(clip)
            times[name].append(time.perf_counter() - t0)
    seconds = CARPHONE_FRAMES * audio.hop_length / audio.sample_rate
    rows = {
        name: {
            "seconds": statistics.median(times[name]),
            "rtf": statistics.median(times[name]) / seconds,
            "stoi_arctic_a0007": ceiling_stoi(outs[name]),
            "max_abs_diff_vs_torch": float((outs[name] - outs["torch"]).abs().max()),
        }
        for name in vocoders
    }
    print(
        f"HiFi-GAN V1 universal, {seconds:.3f} s mel, {torch.get_num_threads()} threads, median of {repeats}"
    )
    print(f"{'vocoder':<18}{'seconds':>9}{'RTF':>8}{'torch/this':>12}{'STOI a0007':>12}{'max|Δ|':>10}")
    for name, row in rows.items():
        ratio = rows["torch"]["seconds"] / row["seconds"]
        print(
            f"{name:<18}{row['seconds']:>9.3f}{row['rtf']:>8.3f}{ratio:>12.2f}"
            f"{row['stoi_arctic_a0007']:>12.4f}{row['max_abs_diff_vs_torch']:>10.1e}"
        )
    out = {"threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vocoder.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    run(parser.parse_args().repeats)
