"""Inference engines: one protocol per network, so the pipeline does not care which backend runs it.

Modules, each importing only the ones above it:

    spec           engine names, network interfaces (inputs, outputs, dynamic axes), the call protocol
    files          exported ONNX files: paths, metadata, the check against the checkpoint
    graphs         the networks traced to ONNX (what `diffv2s export` writes; "onnxruntime-cpu" traces
                   them in memory at load when it has no folder of files)
    profiles       TensorRT optimisation profiles (min / opt / max shapes)
    torch_backend  the reference backend ("torch") and the torch gradient path the others keep
    ort_backend    ONNX Runtime ("onnxruntime", "onnxruntime-cpu", "-cpu-int8", "-cuda", "-trt")
    trt_backend    native TensorRT ("tensorrt" fp16, "tensorrt-fp32")
    build          `build_engines(name, ...)` for any of them

The sampling loop stays in Python (`diffv2s.sampling`) and calls `Engines.denoiser` once per step (twice
with classifier-free guidance: the exported denoiser is one call, guidance is composed around it). The
files themselves are written by `diffv2s export` (package `model_export`). On a CPU with onnxruntime
installed, `Synthesizer.load()` runs "onnxruntime-cpu" (`spec.resolve_engine`). An import-linter contract
(pyproject.toml) keeps these layers acyclic.
"""
