"""Inference engines: one protocol per network, so the pipeline does not care which backend runs it.

Modules, each importing only the ones above it:

    spec           engine names, network interfaces (inputs, outputs, dynamic axes), the call protocol
    files          exported ONNX files: paths, metadata, the check against the checkpoint
    profiles       TensorRT optimisation profiles (min / opt / max shapes)
    torch_backend  the reference backend ("torch") and the torch gradient path the others keep
    ort_backend    ONNX Runtime ("onnxruntime", "onnxruntime-cpu", "-cpu-int8", "-cuda", "-trt")
    trt_backend    native TensorRT ("tensorrt" fp16, "tensorrt-fp32")
    build          `build_engines(name, ...)` for any of them

The sampling loop stays in Python (`diffv2s.sampling`) and calls `Engines.denoiser` once per step. The
files themselves are written by `diffv2s export` (package `model_export`). An import-linter contract
(pyproject.toml) keeps these layers acyclic.
"""
