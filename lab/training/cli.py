"""`diffv2s train`: the whole recipe in one command, resumable.

    diffv2s train --data CORPUS_DIR --out RUN_DIR [--minutes 110] [--stage all|cache|encoder|speaker|denoiser|export]
                  [--resume]
    diffv2s train --preset paper --avhubert large_vox_iter5.pt --data LRS3 --out RUN --device cuda
    torchrun --nproc-per-node 8 -m lab.training.cli --preset paper --avhubert ... (the same, on 8 GPUs)

Exit status: 0 done, 2 bad input, 130 stopped by SIGINT/SIGTERM after saving (continue with --resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffv2s.errors import DiffV2SError

EXIT_STOPPED = 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffv2s train",
        description="Train DiffV2S: cache -> visual encoder -> speaker extractor -> denoiser -> checkpoint.",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="synthetic corpus (corpus.json) or LRS3-layout tree (a resumed run reads it from run.json)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (state, curves, final checkpoint)")
    p.add_argument("--minutes", type=float, default=110.0, help="wall-clock budget for the whole recipe")
    p.add_argument(
        "--stage",
        default="all",
        choices=["all", "cache", "encoder", "speaker", "denoiser", "export"],
        help="run one stage only (the earlier ones must have finished)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --stage export: export the denoiser's last saved EMA weights even if its stage has not "
        "finished (a run cut short); the checkpoint's meta records it",
    )
    p.add_argument("--preset", default="small", help="model preset (small | paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes for the cache step")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--save-every-min", type=float, default=5.0, help="minutes between state saves")
    p.add_argument("--log-every-s", type=float, default=30.0, help="seconds between log lines")
    p.add_argument("--train-split", default=None, help="default: train (synthetic) / trainval (LRS3)")
    p.add_argument(
        "--val-split",
        default=None,
        help="a corpus split, or 'holdout' (the default): up to --max-val utterances held out of the "
        "training split",
    )
    p.add_argument("--max-utterances", type=int, default=None, help="cap on training utterances")
    p.add_argument(
        "--extra-data",
        type=Path,
        nargs="*",
        default=(),
        help="more synthetic corpora of the same speakers made with other seeds: their clips train too, "
        "except those whose sentence is in --data's test splits or validation",
    )
    p.add_argument("--max-val", type=int, default=64, help="cap on validation utterances")
    for stage in ("encoder", "speaker", "denoiser"):
        p.add_argument(
            f"--{stage}-steps", type=int, default=None, help=f"cap on {stage} steps (default: time only)"
        )
    p.add_argument("--encoder-batch", type=int, default=8, help="clips per encoder step")
    p.add_argument("--speaker-batch", type=int, default=32, help="clips (one per speaker) per speaker step")
    p.add_argument("--denoiser-batch", type=int, default=16, help="clips per denoiser step")
    p.add_argument("--encoder-lr", type=float, default=1e-3)
    p.add_argument(
        "--phone-weight",
        type=float,
        default=0.2,
        help="weight of stage A's phone cross-entropy (corpora with phone timings; 0 turns it off); "
        "0.2 is the shipped checkpoint's",
    )
    p.add_argument(
        "--encoder-share",
        type=float,
        default=0.38,
        help="share of the minutes after the cache step that stage A (the visual encoder) gets, 0.1-0.8; "
        "the speaker stage gets 0.05 and the denoiser the rest up to 0.95 (default 0.38: 0.52 for the "
        "denoiser, the shipped checkpoint's split)",
    )
    p.add_argument("--speaker-lr", type=float, default=1e-4)
    p.add_argument("--denoiser-lr", type=float, default=3e-4)
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="final checkpoint path (default RUN/diffv2s-PRESET.pt)"
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune: start the encoder and the denoiser from this checkpoint's weights (same preset), "
        "e.g. the shipped one; each stage still runs its own schedule over its budget",
    )
    p.add_argument(
        "--head-warmup-steps",
        type=int,
        default=200,
        help="with --init-from: stage A's first N steps train only its heads (the phone head starts "
        "fresh) with the warm encoder frozen (default 200; 0 trains everything from the first step)",
    )
    p.add_argument(
        "--avhubert",
        type=Path,
        default=None,
        help="the paper's path: this official AV-HuBERT checkpoint (Large or Base, pretrained or fine-tuned) "
        "is the frozen visual encoder; its features are computed once per clip, stage A does not train",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (under torchrun: one GPU per process)")
    p.add_argument(
        "--precision", default="auto", help="fp32 | bf16 | auto (bf16 autocast on a GPU that has it)"
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="DataLoader processes building the denoiser's batches ahead of the GPU (0: in the training "
        "process; --workers is the cache step's decoder processes)",
    )
    p.add_argument(
        "--override",
        nargs="*",
        default=(),
        metavar="PART.FIELD=VALUE",
        help="change preset fields, e.g. denoiser.layers=4 (recorded in the run and its checkpoint)",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", dest="progress_bar", action="store_true", default=None, help="always show bars"
    )
    bar.add_argument("--no-progress", dest="progress_bar", action="store_false", help="never show bars")
    return p


def train_main(argv: list[str]) -> int:
    """Entry point of `diffv2s train`; returns the exit status."""
    import faulthandler

    import torch

    from lab.training.options import TrainOptions
    from lab.training.recipe import train

    # Long background runs: a crash in native code should leave a traceback in the log.
    faulthandler.enable()
    args = _parser().parse_args(argv)
    opts = TrainOptions(**vars(args))
    opts.extra_data = tuple(opts.extra_data)
    opts.override = tuple(opts.override)
    # Set before anything runs a kernel: a forked pool or a later call cannot change inter-op threads.
    torch.set_num_threads(max(1, opts.threads))
    try:
        result = train(opts)
    except DiffV2SError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if result.status == "stopped":
        return EXIT_STOPPED
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
