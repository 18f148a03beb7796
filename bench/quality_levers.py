"""Quality of the CPU speed levers (issue 21): grammar-ASR WER, STOI, ESTOI and SECS of the model on the
first `--limit` utterances of a corpus split for the path before them (torch vocoder, landmarks on every
frame), the ONNX Runtime vocoder, and that with landmarks on every other frame. Same seeds, the served
system of `diffv2s evaluate` (no ablations, no Whisper), scored with the evaluation's own functions.

Run: `.venv/bin/python -m bench.quality_levers --data var/train/corpus-12spk --limit 44 --json OUT.json`
(not part of `make bench`: ~30 min for 44 utterances on 2 cores).
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


def run(data: Path, split: str, limit: int, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    before = Synthesizer.load(vocoder_engine="torch")
    after = Synthesizer.load(vocoder_engine="onnxruntime-cpu")
    sr = before.cfg.audio.sample_rate
    items = load_items(data, split, sr, limit)
    every = [extract_mouth_roi(it.video, before.cfg.video) for it in items]
    stride2 = [extract_mouth_roi(it.video, before.cfg.video, landmark_stride=2) for it in items]
    spec, _ = plan_systems(before, EvalOptions(sweep=(), speaker_ablations=False))
    seeds = list(range(len(items)))
    scorer = Scorer(whisper=False, threads=threads)
    variants = {
        "before": (before, every),
        "ort_vocoder": (after, every),
        "ort_vocoder+stride2": (after, stride2),
    }
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
    args = parser.parse_args()
    result = run(args.data, args.split, args.limit, args.threads)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
