"""`diffv2s evaluate`: score a checkpoint on a corpus split (JSON + markdown table), on the test split of an
LRS3 tree beside the paper's figures (`--lrs3`), or describe what it makes of videos without ground truth
(`--video`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from diffv2s.cli import add_sampling_arguments
from diffv2s.errors import DiffV2SError

EXIT_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffv2s evaluate",
        description="Evaluate DiffV2S on a corpus split: grammar-ASR and Whisper WER, STOI, ESTOI, PESQ-wb, MCD, "
        "SECS and DNSMOS for the model, the ground truth, the vocoder ceiling and the ablations; on the LRS3 "
        "test split (--lrs3) the same without the grammar ASR, beside the paper's LRS3 figures.",
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="DiffV2S checkpoint (default: the shipped one)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="corpus folder made by `diffv2s corpus make`")
    src.add_argument(
        "--lrs3",
        type=Path,
        metavar="ROOT",
        help="LRS3 tree (ROOT/test/SPEAKER/CLIP.mp4 + .txt, e.g. from `diffv2s corpus to-lrs3`): Whisper WER "
        "against the transcripts, STOI/ESTOI/PESQ/MCD/SECS against each clip's own audio, the paper's LRS3 "
        "figures beside the model's; refused clips are counted with their reason",
    )
    src.add_argument(
        "--video",
        type=Path,
        action="append",
        help="video without ground truth (repeatable): duration, DNSMOS, ASR",
    )
    p.add_argument(
        "--split",
        default=None,
        help="corpus split (default: test_unseen_sentences; with --lrs3: test)",
    )
    p.add_argument(
        "--json", type=Path, required=True, help="output JSON; the markdown table goes beside it (.md)"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate the first N utterances (speakers interleaved)"
    )
    add_sampling_arguments(p)
    p.add_argument(
        "--sweep",
        default=None,
        help="sampler ablations, comma-separated SAMPLER-STEPS, optionally with -cfgW (classifier-free "
        "guidance W) and/or -noiseS (starting-noise scale S), e.g. ddim-4-cfg1.5-noise1 "
        "('' = none; default: dpmpp-10,ddim-10,ddim-25; with --lrs3: none)",
    )
    p.add_argument(
        "--no-speaker-ablations", action="store_true", help="skip the gt-audio / no-speaker variants"
    )
    p.add_argument(
        "--prior",
        action="store_true",
        help="also score the denoiser's visual prior alone (system visual_prior: stage A's mel estimate, "
        "no diffusion)",
    )
    p.add_argument("--no-whisper", action="store_true", help="skip Whisper (the slowest metric on CPU)")
    p.add_argument("--seed", type=int, default=0, help="utterance k is sampled with seed SEED + k")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--engine",
        default="torch",
        help="torch | onnxruntime-cpu | onnxruntime-cpu-int8 | onnxruntime-cuda | tensorrt",
    )
    p.add_argument(
        "--engine-dir",
        type=Path,
        default=None,
        help="exported files of the non-torch engines (diffv2s export)",
    )
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and Whisper")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the Whisper model is assembled")
    p.add_argument("--audio-dir", type=Path, default=None, help="also write every generated WAV here")
    p.add_argument(
        "--mel-figure",
        type=Path,
        default=None,
        help="also write a PNG of the model's vs the ground truth's log-mel for the first utterances",
    )
    p.add_argument("--mel-figure-items", type=int, default=3, help="utterances in --mel-figure")
    return p


def evaluate_main(argv: list[str]) -> int:
    """Entry point of `diffv2s evaluate ARGS` (argv without the subcommand name)."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from lab.evaluation.harness import DEFAULT_SWEEP, EvalOptions, evaluate, evaluate_lrs3, evaluate_videos
    from lab.evaluation.report import markdown_table, write_report

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return EXIT_INPUT
    from lab.evaluation.systems import parse_sampler

    sweep_arg = args.sweep if args.sweep is not None else ("" if args.lrs3 else ",".join(DEFAULT_SWEEP))
    sweep = [s for s in sweep_arg.split(",") if s.strip()]
    split = args.split or ("test" if args.lrs3 else "test_unseen_sentences")
    try:
        for spec in sweep:
            parse_sampler(spec)
    except ValueError as exc:
        print(f"error: --sweep: {exc}", file=sys.stderr)
        return EXIT_INPUT
    opts = EvalOptions(
        split=split,
        limit=args.limit,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        cfg_scale=args.cfg_scale,
        noise_scale=args.noise_scale,
        sweep=sweep,
        speaker_ablations=not args.no_speaker_ablations,
        prior_ablation=args.prior,
        whisper=not args.no_whisper,
        seed=args.seed,
        batch_size=args.batch_size,
        threads=args.threads,
        engine=args.engine,
        engine_dir=args.engine_dir,
        device=args.device,
        cache_dir=args.cache_dir,
        audio_dir=args.audio_dir,
        mel_figure=args.mel_figure,
        mel_figure_items=args.mel_figure_items,
    )
    interactive = sys.stderr.isatty()
    bar = tqdm(desc="evaluate", bar_format="{desc} [{elapsed}]", disable=not interactive)
    last_line = [0.0]

    def progress(message: str) -> None:
        bar.set_description_str(message)
        # In a log file (a background run) one line every half minute shows it is alive.
        now = time.monotonic()
        if not interactive and now - last_line[0] >= 30.0:
            last_line[0] = now
            print(f"[evaluate] {message}", file=sys.stderr, flush=True)

    try:
        if args.video:
            described = evaluate_videos(args.video, args.checkpoint, opts)
            write_report(args.json, described)
            print(json.dumps(described, indent=2))
            return 0
        if args.lrs3:
            result = evaluate_lrs3(args.lrs3, args.checkpoint, opts, progress)
        else:
            result = evaluate(args.data, args.checkpoint, opts, progress)
    except DiffV2SError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        bar.close()
    paths = write_report(args.json, result.report, result.utterances)
    print(markdown_table(result.report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(evaluate_main(sys.argv[1:]))
