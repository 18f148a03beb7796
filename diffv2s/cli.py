"""`diffv2s` command line: synthesize, info, and subcommands registered by other packages.

Other packages add subcommands through the `diffv2s.commands` entry-point group (`model_export`: export;
`lab`: corpus, train, evaluate), so this library never imports them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from diffv2s.engines.spec import ENGINE_NAMES, VOCODER_ENGINES
from diffv2s.errors import DiffV2SError
from diffv2s.schemas import SAMPLERS

EXIT_INPUT = 2
EXIT_RUNTIME = 1


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling flags shared by `synthesize` and `evaluate`; each defaults to the checkpoint's."""
    p.add_argument("--sampler", default=None, choices=SAMPLERS, help="default: the checkpoint's")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, default=0.0, help="speaker-guidance scale (0 = off)")
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (1 = off; default: the checkpoint's)",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        default=None,
        help="scale of the sampler's starting noise (1 = N(0, I), lower = nearer the most likely mel; "
        "default: the checkpoint's)",
    )


def _add_synthesize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthesize", help="turn a silent talking-face video into speech (WAV, optional mp4)")
    p.add_argument("video", type=Path, help="input video (mp4, mov, mkv, webm, avi)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output WAV path")
    p.add_argument("--mp4", type=Path, default=None, help="also write the video with the new soundtrack here")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="DiffV2S checkpoint (default: shipped small)"
    )
    p.add_argument(
        "--engine",
        default=None,
        choices=ENGINE_NAMES,
        help="inference engine (default: onnxruntime-cpu on a CPU with onnxruntime, its networks traced in "
        "memory at load, else torch; with --engine-dir the engines run the exported files)",
    )
    p.add_argument("--engine-dir", type=Path, default=None, help="folder of exported engines")
    p.add_argument(
        "--vocoder-engine",
        default=None,
        choices=VOCODER_ENGINES,
        help="who runs HiFi-GAN (default: onnxruntime-cpu for --engine torch on the CPU, else the engine's own)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--json", action="store_true", help="print timings as JSON")
    p.set_defaults(func=_synthesize)


def _synthesize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from diffv2s.audio import save_wav
    from diffv2s.pipeline import Synthesizer
    from diffv2s.schemas import SynthesisParams, SynthesisRequest

    params = SynthesisParams(
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        cfg_scale=args.cfg_scale,
        noise_scale=args.noise_scale,
    ).validate()
    if not args.video.is_file():
        raise DiffV2SError(f"{args.video} does not exist or is not a file.")
    # Reject what is clearly not a usable video before paying for the model load.
    from diffv2s.config import VideoConfig
    from diffv2s.video.decode import probe_video

    probe_video(args.video).check(VideoConfig())
    synth = Synthesizer.load(
        args.checkpoint, engine=args.engine, engine_dir=args.engine_dir, vocoder_engine=args.vocoder_engine
    )
    if not synth.info["trained"]:
        print(
            "note: this checkpoint is untrained (deterministic initialisation): the output is not speech yet.",
            file=sys.stderr,
        )
    request = SynthesisRequest(
        video=args.video, params=params, output="mp4" if args.mp4 else "wav", mp4_path=args.mp4
    )
    bar = tqdm(total=1, desc="sampling", unit="step", disable=not sys.stderr.isatty() and args.json)

    def progress(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    (result,) = synth.synthesize_batch([request], progress=progress)
    bar.close()
    if result.error is not None:
        raise result.error
    save_wav(args.output, result.waveform, result.sample_rate)
    summary: dict[str, Any] = {
        "output": str(args.output),
        "audio_seconds": round(result.audio_seconds, 3),
        "video_seconds": round(result.video_seconds, 3),
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "real_time_factor": round(result.timings["total"] / max(result.audio_seconds, 1e-9), 4),
    }
    if result.mp4_path:
        summary["mp4"] = str(result.mp4_path)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.output} ({summary['audio_seconds']} s of audio)")
        for stage, seconds in summary["timings"].items():
            print(f"  {stage:<11} {seconds:8.3f} s")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config, size and hash")
    p.add_argument("checkpoint", type=Path, nargs="?", default=None)
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from diffv2s.checkpoints.store import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    n_params = sum(v.numel() for v in ckpt.state_dict.values())
    print(
        json.dumps(
            {
                "path": str(ckpt.path),
                "sha256": ckpt.sha256,
                "preset": ckpt.config.preset,
                "parameters": n_params,
                "meta": ckpt.meta,
                "config": ckpt.config.to_dict(),
            },
            indent=2,
        )
    )
    return 0


def _plugin_commands() -> dict[str, Callable[[list[str]], int]]:
    commands = {}
    for ep in entry_points(group="diffv2s.commands"):
        commands[ep.name] = ep
    return commands  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = _plugin_commands()
    if argv and argv[0] in plugins:
        try:
            command = plugins[argv[0]].load()  # type: ignore[attr-defined]
        except ModuleNotFoundError as exc:  # e.g. `lab` is not in the serving image
            print(
                f"error: `diffv2s {argv[0]}` needs {exc.name}, which is not installed here", file=sys.stderr
            )
            return EXIT_RUNTIME
        try:
            return int(command(argv[1:]))
        except DiffV2SError as exc:
            print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
            return EXIT_INPUT
    parser = argparse.ArgumentParser(prog="diffv2s", description="DiffV2S video-to-speech")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synthesize(sub)
    _add_info(sub)
    for name in sorted(plugins):
        sub.add_parser(name, help=f"(plugin) run `diffv2s {name} --help`")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DiffV2SError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
