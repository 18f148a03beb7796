"""`diffv2s corpus ...`: make a synthetic corpus, list its speakers, export it in the LRS3 layout."""

from __future__ import annotations

import argparse
import sys
import time

from diffv2s.errors import DiffV2SError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffv2s corpus", description="Synthetic GRID-style audio-visual corpus."
    )
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="generate mp4 + transcript per utterance, split train/test")
    mk.add_argument("--out", required=True, help="output directory (resumable: finished utterances are kept)")
    mk.add_argument("--speakers", type=int, default=14, help="number of speakers, the first N of the table")
    mk.add_argument("--utterances", type=int, required=True, help="utterances per speaker")
    mk.add_argument("--seed", type=int, default=0, help="draws the sentences and nuisance, not the speakers")
    mk.add_argument("--workers", type=int, default=1, help="processes")
    mk.add_argument("--size", type=int, default=224, help="frame width and height in pixels (even)")
    mk.add_argument("--unseen-speakers", type=int, default=1, help="last N speakers held out of train")
    mk.add_argument(
        "--test-fraction", type=float, default=0.1, help="share of each train speaker's sentences held out"
    )
    sub.add_parser("speakers", help="list the speakers (voice and face) and whether each voice is installed")
    ex = sub.add_parser("to-lrs3", help="write an LRS3-shaped tree ({split}/{speaker}/{utt}.mp4 + .txt)")
    ex.add_argument("--corpus", required=True)
    ex.add_argument("--out", required=True)
    return p


def corpus_main(argv: list[str]) -> int:
    """Entry point for `diffv2s corpus`; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "make":
            return _make(args)
        if args.command == "speakers":
            return _speakers()
        if args.command == "to-lrs3":
            from lab.corpus.lrs3 import corpus_to_lrs3

            counts = corpus_to_lrs3(args.corpus, args.out)
            print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            return 0
    except DiffV2SError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def _make(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lab.corpus.make import make_corpus

    if args.size % 2:
        raise ValueError("--size must be even (H.264 with 4:2:0 chroma)")
    bar = tqdm(unit="utt", desc="corpus", file=sys.stderr)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    manifest = make_corpus(
        args.out,
        args.speakers,
        args.utterances,
        args.seed,
        workers=args.workers,
        size=args.size,
        unseen_speakers=args.unseen_speakers,
        test_fraction=args.test_fraction,
        progress=progress,
    )
    bar.close()
    sizes = {k: len(v) for k, v in manifest["splits"].items()}
    print(
        f"wrote {sum(sizes.values())} utterances to {args.out} in {time.perf_counter() - t0:.1f} s: {sizes}"
    )
    return 0


def _speakers() -> int:
    from lab.corpus.tts import voice_available
    from lab.corpus.voices import SPEAKERS

    for s in SPEAKERS:
        ok = "ok" if voice_available(s.voice) else "MISSING"
        print(
            f"{s.id}  {s.voice.engine:8s} {s.voice.name:24s} pitch {s.voice.pitch:.2f}  face {s.face.photo:12s} {ok}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(corpus_main(sys.argv[1:]))
