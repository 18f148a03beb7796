"""Denoiser step time per engine: torch eager vs ONNX Runtime CPU (and TensorRT fp16 vs torch on a GPU).

Run: `.venv/bin/python -m bench.bench_engines` (prints tables, writes bench/results/engines.json).

CPU: the `small` preset's denoiser (one sampler step = one call), batch 1 / 4 / 16 x audio 2 / 5 / 10 s
(full-length items), torch eager under `inference_mode` against ONNX Runtime (CPU provider, graph
optimisation ORT_ENABLE_ALL) with the same number of intra-op threads, on the float32 file and on the
int8 one (`diffv2s export --int8`: linear layers' weights in int8, the `onnxruntime-cpu-int8` engine).
All three run interleaved, a warm-up call first, and the median of REPEATS calls is reported, so load
from other processes hits them alike. Goal of the issue: ONNX Runtime >= 1.3x faster than torch eager at
batch >= 4 (reported for both files; the int8 file's accuracy is `diffv2s export verify`'s business).

GPU (only when CUDA is available): TensorRT fp16 vs torch eager fp32 at 5 s of audio, batch 1 -> 16, with
items per second (throughput scaling).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffv2s.checkpoints.store import load_checkpoint, save_checkpoint
from diffv2s.checkpoints.weights import load_model
from diffv2s.config import ModelConfig, preset
from diffv2s.engines.ort_backend import open_session, session_inputs
from diffv2s.engines.spec import network_specs
from diffv2s.model import build_initial_model

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 4, 16)
SECONDS = (2.0, 5.0, 10.0)
REPEATS = 5
GOAL = 1.3


def denoiser_inputs(cfg: ModelConfig, batch: int, seconds: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Full-length denoiser inputs for `seconds` of audio: x_t [B, 80, T], t, visual [B, Tv, D], ..."""
    g = torch.Generator().manual_seed(seed)
    n_mel = round(seconds * cfg.audio.mel_rate)
    n_vid = round(seconds * cfg.video.fps)
    return (
        torch.randn(batch, cfg.audio.n_mels, n_mel, generator=g),
        torch.full((batch,), 500.0),
        torch.randn(batch, n_vid, cfg.encoder.embed_dim, generator=g),
        torch.ones(batch, n_vid, dtype=torch.bool),
        torch.nn.functional.normalize(torch.randn(batch, cfg.speaker.embed_dim, generator=g), dim=-1),
        torch.ones(batch, n_mel, dtype=torch.bool),
        torch.zeros(batch, dtype=torch.bool),
    )


def _time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved (one warm-up call each first)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _export_denoiser(workdir: Path) -> tuple[Any, Path]:
    from model_export.onnx_export import export_onnx

    model = build_initial_model(preset("small"))
    save_checkpoint(workdir / "small.pt", model.cfg, model.state_dict(), {"trained": False})
    ckpt = load_checkpoint(workdir / "small.pt")
    export_onnx(
        ckpt,
        workdir,
        networks=["denoiser", "vocoder"] if torch.cuda.is_available() else ["denoiser"],
        int8=True,
    )
    return ckpt, workdir


def cpu_section(ckpt: Any, workdir: Path, threads: int) -> list[dict[str, Any]]:
    cfg = ckpt.config
    spec = network_specs(cfg)["denoiser"]
    model = load_model(ckpt)
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    session = open_session(workdir / "denoiser.onnx", "onnxruntime-cpu", cpu, spec, cfg, threads)
    int8 = open_session(workdir / "denoiser.int8.onnx", "onnxruntime-cpu-int8", cpu, spec, cfg, threads)
    rows = []
    for batch in BATCHES:
        for seconds in SECONDS:
            inputs = denoiser_inputs(cfg, batch, seconds)
            feeds = session_inputs(spec, inputs)

            def run_torch(inputs: tuple[torch.Tensor, ...] = inputs) -> object:
                with torch.inference_mode():
                    return model.denoiser(*inputs)

            def run_ort(feeds: dict[str, Any] = feeds) -> object:
                return session.session.run(None, feeds)

            def run_int8(feeds: dict[str, Any] = feeds) -> object:
                return int8.session.run(None, feeds)

            # Large cases cost seconds per call: fewer repeats keep the whole table to a few minutes.
            repeats = REPEATS if batch * seconds <= 40 else 3
            fns = {"torch": run_torch, "ort": run_ort, "int8": run_int8}
            t = _time_interleaved(fns, repeats, lambda: None)
            rows.append(
                {
                    "batch": batch,
                    "audio_s": seconds,
                    "mel_frames": inputs[0].shape[2],
                    "torch_ms": 1e3 * t["torch"],
                    "ort_ms": 1e3 * t["ort"],
                    "speedup": t["torch"] / t["ort"],
                    "ort_int8_ms": 1e3 * t["int8"],
                    "int8_speedup": t["torch"] / t["int8"],
                }
            )
            r = rows[-1]
            print(
                f"{batch:>5} {seconds:>6.0f} {r['mel_frames']:>6} {r['torch_ms']:>10.1f} {r['ort_ms']:>10.1f}"
                f" {r['speedup']:>7.2f}x {r['ort_int8_ms']:>9.1f} {r['int8_speedup']:>7.2f}x",
                flush=True,
            )
    return rows


def gpu_section(ckpt: Any, workdir: Path) -> dict[str, Any]:
    """TensorRT fp16 vs torch eager on the GPU, 5 s of audio, batch 1..16."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return {"skipped": "tensorrt is not installed"}
    from diffv2s.engines.profiles import ShapeLimits
    from diffv2s.engines.trt_backend import TrtNetwork, load_or_build

    cfg = ckpt.config
    spec = network_specs(cfg)["denoiser"]
    dev = torch.device("cuda", torch.cuda.current_device())
    model = load_model(ckpt).to(dev)
    t0 = time.perf_counter()
    engine, cache, built = load_or_build(workdir / "denoiser.onnx", spec, cfg, dev, True, ShapeLimits())
    build_s = time.perf_counter() - t0
    trt_net = TrtNetwork(engine, spec, dev)
    rows = []
    print(
        f"\nGPU {torch.cuda.get_device_name(dev)}: denoiser step, 5 s audio (TensorRT build {build_s:.0f} s)"
    )
    print(f"{'batch':>5} {'torch ms':>10} {'trt ms':>10} {'speedup':>8} {'torch it/s':>11} {'trt it/s':>9}")
    for batch in (1, 2, 4, 8, 16):
        inputs = tuple(x.to(dev) for x in denoiser_inputs(cfg, batch, 5.0))

        def run_torch(inputs: tuple[torch.Tensor, ...] = inputs) -> object:
            with torch.inference_mode():
                return model.denoiser(*inputs)

        def run_trt(inputs: tuple[torch.Tensor, ...] = inputs) -> object:
            return trt_net(*inputs)

        t = _time_interleaved({"torch": run_torch, "trt": run_trt}, 20, torch.cuda.synchronize)
        with torch.inference_mode():
            err = float((run_torch().float() - run_trt().float()).abs().max())  # type: ignore[attr-defined]
        rows.append(
            {
                "batch": batch,
                "torch_ms": 1e3 * t["torch"],
                "trt_fp16_ms": 1e3 * t["trt"],
                "speedup": t["torch"] / t["trt"],
                "torch_items_per_s": batch / t["torch"],
                "trt_items_per_s": batch / t["trt"],
                "max_abs_diff": err,
            }
        )
        r = rows[-1]
        print(
            f"{batch:>5} {r['torch_ms']:>10.2f} {r['trt_fp16_ms']:>10.2f} {r['speedup']:>7.2f}x"
            f" {r['torch_items_per_s']:>11.1f} {r['trt_items_per_s']:>9.1f}"
        )
    return {
        "gpu": torch.cuda.get_device_name(dev),
        "engine_cache": cache.name,
        "build_s": build_s,
        "rows": rows,
    }


def thread_counts() -> list[int]:
    """BENCH_THREADS="1,4" or, by default, 1 and every core: one thread compares the kernels alone, all
    cores adds each runtime's threading (and, on a shared machine, its sensitivity to other load)."""
    if os.environ.get("BENCH_THREADS"):
        return [int(n) for n in os.environ["BENCH_THREADS"].split(",")]
    cores = os.cpu_count() or 1
    return sorted({1, cores})


def run() -> dict[str, Any]:
    import onnxruntime as ort

    result: dict[str, Any] = {"torch": torch.__version__, "onnxruntime": ort.__version__, "cpu": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, workdir = _export_denoiser(Path(tmp))
        for threads in thread_counts():
            print(
                f"denoiser step, small preset, CPU, {threads} thread(s) "
                f"(torch {torch.__version__}, onnxruntime {ort.__version__}; median ms per call)"
            )
            print(
                f"{'batch':>5} {'audio':>6} {'frames':>6} {'torch ms':>10} {'ort ms':>10} {'speedup':>8}"
                f" {'int8 ms':>9} {'speedup':>8}"
            )
            rows = cpu_section(ckpt, workdir, threads)
            at_scale = min(r["speedup"] for r in rows if r["batch"] >= 4)
            int8_at_scale = min(r["int8_speedup"] for r in rows if r["batch"] >= 4)
            result["cpu"][f"{threads}_threads"] = {
                "rows": rows,
                "min_speedup_batch_ge_4": at_scale,
                "goal_met": at_scale >= GOAL,
                "int8_min_speedup_batch_ge_4": int8_at_scale,
                "int8_goal_met": int8_at_scale >= GOAL,
            }
            for label, value in (("float32", at_scale), ("int8", int8_at_scale)):
                print(
                    f"ONNX Runtime {label} / torch at batch >= 4, {threads} thread(s): min {value:.2f}x "
                    f"(goal {GOAL}x): {'met' if value >= GOAL else 'NOT met'}"
                )
            print()
        result["gpu"] = (
            gpu_section(ckpt, workdir) if torch.cuda.is_available() else {"skipped": "no CUDA device"}
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
