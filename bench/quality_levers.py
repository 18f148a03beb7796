"""Quality of the CPU speed levers (issue 21): grammar-ASR WER, STOI, ESTOI and SECS of the model on the
first `--limit` utterances of a corpus split for each variant (`VARIANTS`): the path before them (torch
vocoder, landmarks on every frame), the ONNX Runtime vocoder with the torch networks, that with landmarks
on every other frame, and every network in ONNX Runtime (the engine "onnxruntime-cpu", traced in memory).
Same seeds, the served system of `diffv2s evaluate` (no ablations, no Whisper), scored with the
evaluation's own functions.

Run: `.venv/bin/python -m bench.quality_levers --data var/train/corpus-12spk --limit 44 --json OUT.json
[--variants ort_vocoder,ort_all]` (not part of `make bench`: ~10 min per variant for 44 utterances on 2
cores).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from pystoi import stoi

from diffv2s.pipeline import Synthesizer
from diffv2s.video.mouth_roi import extract_mouth_roi
from lab.evaluation.corpus_data import load_items
from lab.evaluation.harness import EvalOptions, plan_systems
from lab.evaluation.scoring import Scorer, UtteranceScore, summarize
from lab.evaluation.systems import synthesize_system

# name -> (Synthesizer.load keyword arguments, landmark stride of the mouth ROIs)
VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "before": ({"engine": "torch", "vocoder_engine": "torch"}, 1),
    "ort_vocoder": ({"engine": "torch", "vocoder_engine": "onnxruntime-cpu"}, 1),
    "ort_vocoder+stride2": ({"engine": "torch", "vocoder_engine": "onnxruntime-cpu"}, 2),
    "ort_all": ({"engine": "onnxruntime-cpu"}, 1),
}


def run(
    data: Path, split: str, limit: int, threads: int = 2, names: tuple[str, ...] = tuple(VARIANTS)
) -> dict:
    torch.set_num_threads(threads)
    synths = {name: Synthesizer.load(**VARIANTS[name][0]) for name in names}  # type: ignore[arg-type]
    first = next(iter(synths.values()))
    sr = first.cfg.audio.sample_rate
    items = load_items(data, split, sr, limit)
    strides = sorted({VARIANTS[name][1] for name in names})
    rois_by = {
        k: [extract_mouth_roi(it.video, first.cfg.video, landmark_stride=k) for it in items] for k in strides
    }
    spec, _ = plan_systems(first, EvalOptions(sweep=(), speaker_ablations=False))
    seeds = list(range(len(items)))
    scorer = Scorer(whisper=False, threads=threads)
    variants = {name: (synths[name], rois_by[VARIANTS[name][1]]) for name in names}
    out: dict = {}
    for name, (synth, rois) in variants.items():
        rows = []
        for b in range(0, len(items), 8):
            wavs = synthesize_system(synth, spec, rois[b : b + 8], seeds[b : b + 8])
            for item, wav in zip(items[b : b + 8], wavs, strict=True):
                n = min(len(item.audio), len(wav))
                ref, gen = item.audio[:n].astype(np.float64), wav[:n].astype(np.float64)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    rows.append(
                        UtteranceScore(
                            utt_id=item.utt_id,
                            speaker=item.speaker,
                            reference=item.text,
                            hyp_grammar=scorer.grammar.transcribe(gen, sr),
                            hyp_whisper=None,
                            stoi=stoi(ref, gen, sr),
                            estoi=stoi(ref, gen, sr, extended=True),
                            pesq=math.nan,
                            mcd=math.nan,
                            secs=scorer._secs(item.utt_id, ref, gen, sr),
                            dnsmos=math.nan,
                            dnsmos_sig=math.nan,
                            dnsmos_bak=math.nan,
                            dnsmos_p808=math.nan,
                        )
                    )
        summary = summarize(rows)
        out[name] = {k: summary.get(k) for k in ("n_utterances", "wer", "stoi", "estoi", "secs")}
        print(name, " ".join(f"{k} {v:.4f}" for k, v in out[name].items() if k != "n_utterances"), flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="corpus folder (diffv2s corpus make)")
    parser.add_argument("--split", default="test_unseen_sentences")
    parser.add_argument("--limit", type=int, default=44)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (run in that order)",
    )
    args = parser.parse_args()
    names = tuple(n.strip() for n in args.variants.split(",") if n.strip())
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    result = run(args.data, args.split, args.limit, args.threads, names)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
