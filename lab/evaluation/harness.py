"""`evaluate`: synthesize a corpus split with every system, score each utterance, aggregate per system.

Mouth ROIs are extracted once per utterance and shared by all synthesized systems; every system uses the
same per-utterance seeds, so two systems differ only in what the ablation changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffv2s.audio import save_wav
from diffv2s.errors import DiffV2SError, InputError
from diffv2s.pipeline import Synthesizer
from diffv2s.schemas import SynthesisParams, resolve_sampling
from diffv2s.video.mouth_roi import MouthROI, extract_mouth_roi
from lab.evaluation.corpus_data import (
    EvalItem,
    check_lrs3_tree,
    load_items,
    load_lrs3_items,
    refusal,
    refusal_counts,
)
from lab.evaluation.figures import MelPair, write_mel_figure
from lab.evaluation.scoring import Scorer, UtteranceScore, summarize
from lab.evaluation.systems import (
    SystemSpec,
    ground_truth_mel,
    parse_sampler,
    synthesize_system,
    visual_prior_spec,
    vocode_ground_truth,
)

Progress = Callable[[str], None]
DEFAULT_SWEEP = ("dpmpp-10", "ddim-10", "ddim-25")

METRIC_NOTES: dict[str, str] = {
    "wer": "grammar ASR: pocketsphinx en-us acoustic model + JSGF grammar of the GRID corpus; corpus-level "
    "(edits / reference words) after text normalisation; null on an open-vocabulary corpus (LRS3)",
    "wer_whisper": "Whisper base (faster-whisper, int8, beam 5, English, no prompt), open vocabulary, same "
    "normalisation",
    "stoi": "pystoi STOI at 16 kHz",
    "estoi": "pystoi extended STOI at 16 kHz",
    "pesq": "ITU-T P.862.2 wide-band MOS-LQO at 16 kHz (pesq package)",
    "mcd": "mel-cepstral distortion [dB]: SPTK mcep order 24, alpha 0.42, 25 ms/5 ms frames at 16 kHz, "
    "frames > 40 dB below the loudest dropped, DTW-aligned, c0 excluded",
    "secs": "cosine of resemblyzer GE2E embeddings, generated vs ground truth",
    "dnsmos": "DNSMOS P.835 OVRL (speechmos ONNX models); sig/bak/p808 alongside",
    "slot_accuracy": "share of utterances whose GRID slot the grammar ASR recognised (minimum-edit alignment)",
    "sentence_accuracy": "share of utterances the grammar ASR recognised without error",
}


@dataclass
class EvalOptions:
    """What to run. `sampler`/`steps`/`cfg_scale`/`noise_scale` None = the checkpoint's defaults; `sweep` =
    sampler ablations."""

    split: str = "test_unseen_sentences"
    limit: int | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float = 0.0
    cfg_scale: float | None = None
    noise_scale: float | None = None
    sweep: Sequence[str] = DEFAULT_SWEEP
    speaker_ablations: bool = True
    prior_ablation: bool = False  # also score the denoiser's visual prior alone (`visual_prior`)
    whisper: bool = True
    grammar: bool = True  # the GRID grammar ASR and its per-slot accuracy (off for open-vocabulary speech)
    seed: int = 0
    batch_size: int = 8
    threads: int = 1
    engine: str = "torch"
    engine_dir: Path | None = None  # exported files for the non-torch engines (`diffv2s export --out`)
    device: str = "cpu"
    cache_dir: Path | None = None
    audio_dir: Path | None = None
    mel_figure: Path | None = None  # PNG of the model's vs the ground truth's log-mel, first items
    mel_figure_items: int = 3


@dataclass
class EvalResult:
    """`report` is the JSON document; `utterances` the per-utterance rows of every system."""

    report: dict[str, Any]
    utterances: list[dict[str, Any]] = field(default_factory=list)


def plan_systems(synth: Synthesizer, opts: EvalOptions) -> tuple[SystemSpec, list[SystemSpec]]:
    """(the main `model` system, the ablations) for this checkpoint and these options."""
    sampling = resolve_sampling(
        SynthesisParams(
            sampler=opts.sampler,
            steps=opts.steps,
            guidance=opts.guidance,
            cfg_scale=opts.cfg_scale,
            noise_scale=opts.noise_scale,
        ),
        synth.cfg,
    )
    model = SystemSpec.sampled_as(
        "model", "DiffV2S, vision-guided speaker embedding s_v", sampling, speaker="visual"
    )
    ablations: list[SystemSpec] = []
    base = {
        "sampler": model.sampler,
        "steps": model.steps,
        "guidance": model.guidance,
        "cfg_scale": model.cfg_scale,
        "noise_scale": model.noise_scale,
    }
    if opts.speaker_ablations:
        ablations.append(
            SystemSpec(
                "gt_audio_speaker",
                "speaker embedding from the ground-truth audio (extractor's audio path) instead of s_v",
                speaker="audio",
                **base,  # type: ignore[arg-type]
            )
        )
        ablations.append(
            SystemSpec(
                "no_speaker",
                "no speaker embedding: the denoiser's learned null speaker vector (visual features kept)",
                speaker="null",
                **base,  # type: ignore[arg-type]
            )
        )
    if opts.prior_ablation:
        if synth.model.denoiser.prior is None:
            raise InputError(
                "--prior: this checkpoint's denoiser has no visual prior (prior_subframes = 0); "
                "leave --prior out"
            )
        ablations.append(visual_prior_spec())
    for spec in opts.sweep:
        entry = parse_sampler(spec)
        ablations.append(
            SystemSpec(
                entry.name,
                entry.description,
                speaker="visual",
                sampler=entry.sampler,
                steps=entry.steps,
                guidance=model.guidance,
                cfg_scale=model.cfg_scale if entry.cfg_scale is None else entry.cfg_scale,
                noise_scale=model.noise_scale if entry.noise_scale is None else entry.noise_scale,
            )
        )
    return model, ablations


def _extract_rois(
    synth: Synthesizer, items: Sequence[EvalItem], say: Progress
) -> tuple[list[EvalItem], list[MouthROI], list[dict[str, str]]]:
    """(kept items, their mouth ROIs, refused items with the error's code as reason: no_face_found,
    video_too_short, ...)."""
    kept: list[EvalItem] = []
    rois: list[MouthROI] = []
    skipped: list[dict[str, str]] = []
    for k, item in enumerate(items):
        try:
            rois.append(extract_mouth_roi(item.video, synth.cfg.video))
            kept.append(item)
        except DiffV2SError as exc:
            skipped.append(refusal(item.utt_id, exc.code, exc.message))
        say(f"mouth ROIs {k + 1}/{len(items)}")
    return kept, rois, skipped


def _batches(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, max(1, size))]


# Loads a split's items at a sample rate: (items, clips refused before any video was decoded).
Loader = Callable[[int], tuple[list[EvalItem], list[dict[str, str]]]]


def evaluate(
    data: Path,
    checkpoint: Path | None = None,
    opts: EvalOptions | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate a checkpoint (default: the shipped one) on one split of a corpus made by `diffv2s corpus make`."""
    opts = opts or EvalOptions()

    def load(sr: int) -> tuple[list[EvalItem], list[dict[str, str]]]:
        return load_items(Path(data), opts.split, sr, opts.limit), []

    return _evaluate(load, {"data": str(data), "corpus": "synthetic"}, checkpoint, opts, progress)


def evaluate_lrs3(
    root: Path,
    checkpoint: Path | None = None,
    opts: EvalOptions | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate a checkpoint on one split of an LRS3 tree (`opts.split`, normally `test`): WER of Whisper
    against each clip's transcript, STOI/ESTOI/PESQ/MCD/SECS against the clip's own audio track, DNSMOS;
    no grammar ASR (LRS3 is open vocabulary). The report carries the paper's LRS3 figures
    (`lab.evaluation.paper`) and every refused clip with its reason."""
    from lab.evaluation.paper import paper_section

    opts = replace(opts or EvalOptions(split="test"), grammar=False)
    check_lrs3_tree(Path(root), opts.split)  # before the model loads

    def load(sr: int) -> tuple[list[EvalItem], list[dict[str, str]]]:
        return load_lrs3_items(Path(root), opts.split, sr, opts.limit)

    result = _evaluate(load, {"data": str(root), "corpus": "lrs3"}, checkpoint, opts, progress)
    result.report["paper"] = paper_section("LRS3")
    return result


def _evaluate(
    load: Loader,
    source: dict[str, Any],
    checkpoint: Path | None,
    opts: EvalOptions,
    progress: Progress | None,
) -> EvalResult:
    import torch

    say = progress or (lambda _msg: None)
    torch.set_num_threads(max(1, opts.threads))
    t_start = time.perf_counter()
    synth = Synthesizer.load(checkpoint, engine=opts.engine, device=opts.device, engine_dir=opts.engine_dir)
    sr = synth.cfg.audio.sample_rate
    items, refused = load(sr)
    if not items:
        raise ValueError(f"split {opts.split!r} of {source['data']} has no usable utterances: {refused[:3]}")
    items, rois, skipped = _extract_rois(synth, items, say)
    skipped = refused + skipped
    if not items:
        raise ValueError(f"no utterance of split {opts.split!r} has a usable video: {skipped[:3]}")
    scorer = Scorer(
        whisper=opts.whisper, cache_dir=opts.cache_dir, threads=opts.threads, grammar=opts.grammar
    )
    seeds = [opts.seed + k for k in range(len(items))]
    model_spec, ablations = plan_systems(synth, opts)

    rows: dict[str, list[UtteranceScore]] = {}
    computed: dict[tuple[Any, ...], list[UtteranceScore]] = {}

    figure_items = min(len(items), max(0, opts.mel_figure_items)) if opts.mel_figure is not None else 0
    model_wavs: list[np.ndarray] = []

    def score_all(name: str, make: Callable[[range], list[np.ndarray]]) -> None:
        out: list[UtteranceScore] = []
        for batch in _batches(len(items), opts.batch_size):
            wavs = make(batch)
            for k, wav in zip(batch, wavs, strict=True):
                item = items[k]
                if name == "model" and k < figure_items:
                    model_wavs.append(wav)
                if opts.audio_dir is not None:
                    folder = Path(opts.audio_dir) / name
                    folder.mkdir(parents=True, exist_ok=True)
                    save_wav(folder / f"{item.utt_id}.wav", wav, sr)
                out.append(scorer.score(item.utt_id, item.speaker, item.text, item.audio, wav, sr))
            say(f"{name}: {len(out)}/{len(items)} utterances")
        rows[name] = out

    score_all("ground_truth", lambda b: [items[k].audio for k in b])
    score_all("vocoder_ceiling", lambda b: vocode_ground_truth(synth, [items[k].audio for k in b]))
    for spec in [model_spec, *ablations]:
        if spec.sampling_key in computed:
            # Same speaker mode, sampler, steps and seeds as a system already run: identical audio.
            rows[spec.name] = computed[spec.sampling_key]
            continue

        def make(b: range, spec: SystemSpec = spec) -> list[np.ndarray]:
            mels = [ground_truth_mel(synth, items[k].audio) for k in b] if spec.speaker == "audio" else None
            return synthesize_system(synth, spec, [rois[k] for k in b], [seeds[k] for k in b], mels)

        score_all(spec.name, make)
        computed[spec.sampling_key] = rows[spec.name]

    def system_entry(name: str, description: str, spec: SystemSpec | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"description": description}
        if spec is not None:
            entry.update(
                speaker=spec.speaker,
                sampler=spec.sampler,
                steps=spec.steps,
                guidance=spec.guidance,
                cfg_scale=spec.cfg_scale,
                noise_scale=spec.noise_scale,
                denoiser=spec.denoiser,
            )
        entry.update(summarize(rows[name], grid=opts.grammar))
        return entry

    report: dict[str, Any] = {
        "meta": {
            **source,
            "split": opts.split,
            "n_items_requested": opts.limit,
            "n_items_scored": len(items),
            "skipped": skipped,
            "refused": refusal_counts(skipped),
            "grammar_asr": opts.grammar,
            "checkpoint_sha256": synth.checkpoint_sha256,
            "checkpoint_trained": bool(synth.checkpoint_meta.get("trained", False)),
            "preset": synth.cfg.preset,
            "engine": synth.engines.name,
            "seed": opts.seed,
            "sample_rate": sr,
            "seconds": None,
            "metrics": METRIC_NOTES,
        },
        "model": system_entry("model", model_spec.description, model_spec),
        "vocoder_ceiling": system_entry(
            "vocoder_ceiling", "ground-truth log-mel -> our HiFi-GAN (the model's ceiling)", None
        ),
        "ground_truth": system_entry("ground_truth", "the clip's own audio track", None),
        "ablations": {spec.name: system_entry(spec.name, spec.description, spec) for spec in ablations},
    }
    if opts.mel_figure is not None and model_wavs:
        pairs = [
            MelPair(
                f"{items[k].utt_id}: {items[k].text}",
                ground_truth_mel(synth, wav).numpy(),
                ground_truth_mel(synth, items[k].audio).numpy(),
                synth.cfg.audio.mel_rate,
            )
            for k, wav in enumerate(model_wavs)
        ]
        report["meta"]["mel_figure"] = str(write_mel_figure(pairs, opts.mel_figure))
    report["meta"]["seconds"] = round(time.perf_counter() - t_start, 1)
    utterances = [{"system": name, **r.to_dict()} for name, rs in rows.items() for r in rs]
    return EvalResult(report, utterances)


def evaluate_videos(
    videos: Sequence[Path], checkpoint: Path | None = None, opts: EvalOptions | None = None
) -> dict[str, Any]:
    """Videos without ground truth (e.g. a real clip): what the model produces (duration, DNSMOS, what the
    two ASRs hear). Uses the `model` system's sampler settings."""
    import torch

    from diffv2s.schemas import SynthesisRequest

    opts = opts or EvalOptions()
    torch.set_num_threads(max(1, opts.threads))
    synth = Synthesizer.load(checkpoint, engine=opts.engine, device=opts.device, engine_dir=opts.engine_dir)
    model_spec, _ = plan_systems(synth, replace(opts, sweep=(), speaker_ablations=False))
    scorer = Scorer(whisper=opts.whisper, cache_dir=opts.cache_dir, threads=opts.threads)
    params = model_spec.params(opts.seed)
    out: list[dict[str, Any]] = []
    for video in videos:
        (res,) = synth.synthesize_batch([SynthesisRequest(video=Path(video), params=params)])
        entry: dict[str, Any] = {"video": str(video)}
        if res.error is not None:
            entry["error"] = f"{res.error.code}: {res.error.message}"
        else:
            entry["video_seconds"] = res.video_seconds
            entry.update(scorer.describe_unreferenced(res.waveform, res.sample_rate))
            if opts.audio_dir is not None:
                Path(opts.audio_dir).mkdir(parents=True, exist_ok=True)
                save_wav(Path(opts.audio_dir) / f"{Path(video).stem}.wav", res.waveform, res.sample_rate)
        out.append(entry)
    return {
        "meta": {
            "checkpoint_sha256": synth.checkpoint_sha256,
            "checkpoint_trained": bool(synth.checkpoint_meta.get("trained", False)),
            "engine": synth.engines.name,
            "sampler": model_spec.sampler,
            "steps": model_spec.steps,
            "cfg_scale": model_spec.cfg_scale,
            "noise_scale": model_spec.noise_scale,
            "seed": opts.seed,
        },
        "videos": out,
    }
