"""HiFi-GAN V1 (universal weights) in torch vs ONNX Runtime float32 on the CPU: seconds per call and the
real-speech vocoder ceiling of each, in one run; with `--student`, also a small vocoder distilled from V1
(`lab/vocoder_distill.py`, issue 21's last lever), in torch and ONNX Runtime.

Run: `.venv/bin/python -m bench.bench_vocoder` (prints a table, writes bench/results/vocoder.json);
`.venv/bin/python -m bench.bench_vocoder --student var/vocoder-small.pt --corpus 6`.
Input: CMU ARCTIC a0007 (the recording shipped in pysptk, as in the README) -> our log-mel -> each vocoder;
STOI of the output against the recording at its own 16 kHz. Speed: the same mel cut or padded to the
carphone clip's 4.004 s (345 frames), the vocoders called in turn, median of `repeats`, `--threads` torch
and ONNX Runtime threads (default 2). `--corpus N`: N corpus utterances (the corpus speakers speaking GRID
sentences, drawn with a seed the distillation's data does not use) -> log-mel -> each vocoder; mean STOI and
ESTOI against the TTS speech at 16 kHz.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pystoi import stoi
from scipy.signal import resample_poly

from diffv2s.audio import load_wav, mel_spectrogram
from diffv2s.config import AudioConfig, VocoderConfig, preset
from diffv2s.engines.ort_backend import ort_cpu_vocoder
from diffv2s.nn.hifigan import Vocoder, make_vocoder

VocoderFn = Callable[[torch.Tensor], torch.Tensor]
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


def corpus_scores(vocoders: dict[str, VocoderFn], n: int, audio: AudioConfig) -> dict[str, dict[str, float]]:
    """Mean STOI / ESTOI of each vocoder on `n` held-out corpus utterances (seed 1; the distillation's data
    is seed 0), against the TTS speech itself at 16 kHz."""
    from lab.vocoder_distill import corpus_speech

    scores: dict[str, dict[str, list[float]]] = {name: {"stoi": [], "estoi": []} for name in vocoders}
    for wav in corpus_speech(n, 1, audio):
        reference = resample_poly(wav.astype(np.float64), 320, 441)
        mel = mel_spectrogram(torch.from_numpy(wav), audio)
        for name, voc in vocoders.items():
            out = resample_poly(voc(mel)[0].numpy().astype(np.float64), 320, 441)
            k = min(len(reference), len(out))
            scores[name]["stoi"].append(float(stoi(reference[:k], out[:k], 16000, extended=False)))
            scores[name]["estoi"].append(float(stoi(reference[:k], out[:k], 16000, extended=True)))
    return {name: {m: float(np.mean(v)) for m, v in s.items()} for name, s in scores.items()}


def run(repeats: int = 7, student: Path | None = None, corpus: int = 0, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    audio = AudioConfig()
    torch_voc = make_vocoder(VocoderConfig())
    assert isinstance(torch_voc, Vocoder)
    vocoders: dict[str, VocoderFn] = {
        "torch": torch_voc,
        "onnxruntime-cpu": ort_cpu_vocoder(torch_voc.generator, preset("small"), threads),
    }
    if student is not None:
        from lab.vocoder_distill import load_student

        small = load_student(student)
        vocoders["student torch"] = small
        vocoders["student onnxruntime"] = ort_cpu_vocoder(small.generator, preset("small"), threads)
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
    if corpus:
        for name, score in corpus_scores(vocoders, corpus, audio).items():
            rows[name]["corpus_stoi"] = score["stoi"]
            rows[name]["corpus_estoi"] = score["estoi"]
    print(
        f"HiFi-GAN V1 universal{' and the distilled student' if student else ''}, {seconds:.3f} s mel, "
        f"{torch.get_num_threads()} threads, median of {repeats}"
    )
    head = f"{'vocoder':<20}{'seconds':>9}{'RTF':>8}{'torch/this':>12}{'STOI a0007':>12}{'max|Δ|':>10}"
    if corpus:
        head += f"{f'STOI corpus×{corpus}':>18}{'ESTOI corpus':>14}"
    print(head)
    for name, row in rows.items():
        ratio = rows["torch"]["seconds"] / row["seconds"]
        line = (
            f"{name:<20}{row['seconds']:>9.3f}{row['rtf']:>8.3f}{ratio:>12.2f}"
            f"{row['stoi_arctic_a0007']:>12.4f}{row['max_abs_diff_vs_torch']:>10.1e}"
        )
        if corpus:
            line += f"{row['corpus_stoi']:>18.4f}{row['corpus_estoi']:>14.4f}"
        print(line)
    out = {
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "student": str(student) if student else None,
        "corpus_utterances": corpus,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("vocoder-student.json" if student else "vocoder.json")).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--student", type=Path, help="a checkpoint of lab/vocoder_distill.py")
    parser.add_argument("--corpus", type=int, default=0, help="held-out corpus utterances to score")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run(args.repeats, args.student, args.corpus, args.threads)
