"""Training smoke run on a tiny fake cache: every stage's loss falls, SIGTERM saves and --resume continues
from the saved step, and the exported checkpoint loads in the Synthesizer and speaks a real video."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from diffv2s.checkpoints.store import load_checkpoint
from diffv2s.config import preset
from diffv2s.errors import InputError
from diffv2s.nn.speaker import speaker_loss
from diffv2s.pipeline import Synthesizer
from diffv2s.schemas import SynthesisParams, SynthesisRequest
from lab.training.cache import CacheSet
from lab.training.data import HOLDOUT
from lab.training.encoder_stage import EncoderStage
from lab.training.features import FeatureSet
from lab.training.loop import load_state, stage_record
from lab.training.options import TrainOptions
from lab.training.recipe import train
from lab.training.run_folder import Run, model_with_stages
from lab.training.speaker_stage import SpeakerStage
from tests.fixtures.fake_cache import write_fake_cache
from tests.fixtures.videos import carphone_path

STOP_AT = 10
DENOISER_STEPS = 30
ENCODER_STEPS = 20
FEW_STEPS = (3, 3, 3)


def _falls(values: list[float], k: int = 5, factor: float = 0.85) -> tuple[float, float, bool]:
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return first, last, last < factor * first


def fake_run(run_dir: Path, init: Path | None, steps: tuple[int, int, int]) -> TrainOptions:
    """A run folder over the fake cache, started the way `train` starts one (with --init-from: the
    starting point recorded in run.json), and the options that train it for `steps` (encoder, speaker, denoiser) steps."""
    from lab.training import warm_start

    cfg = preset("small")
    write_fake_cache(run_dir, cfg)
    run = Run(run_dir)
    run.info = {
        # The fake cache's val clips stand for clips held out of training (what the recipe defaults to).
        "splits": {"train": "train", "val": HOLDOUT},
        "cache": {"complete": True},
        "corpus": {"kind": "fake", "name": "fake"},
    }
    if init is not None:
        run.info["init_from"] = warm_start.init_record(warm_start.load_init(init, cfg))
    run.save()
    return TrainOptions(
        data=None,
        out=run_dir,
        minutes=30,
        resume=True,
        threads=1,
        log_every_s=0.0,
        encoder_batch=3,
        speaker_batch=3,
        denoiser_batch=6,
        encoder_share=0.5,
        progress_bar=False,
        encoder_steps=steps[0],
        speaker_steps=steps[1],
        denoiser_steps=steps[2],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    run_dir = tmp_path_factory.mktemp("run")
    opts = fake_run(run_dir, None, (ENCODER_STEPS, 30, DENOISER_STEPS))
    lines: list[str] = []

    def interrupting_log(message: str) -> None:
        lines.append(message)
        if message.startswith(f"[denoiser] step {STOP_AT} "):
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(opts, log=interrupting_log)
    at_stop = stage_record(run_dir / "denoiser" / "state.pt")
    export = dataclasses.replace(opts, stage="export", checkpoint=run_dir / "cut-short.pt")
    try:
        train(export, log=lines.append)
        refused = ""
    except InputError as exc:
        refused = exc.message
    forced = train(dataclasses.replace(export, force=True), log=lines.append)
    second = train(opts, log=lines.append)
    yield {
        "run": run_dir,
        "first": first,
        "second": second,
        "at_stop": at_stop,
        "lines": lines,
        "refused": refused,
        "forced": forced,
    }
    torch.set_num_threads(threads)


def test_each_stage_loss_falls(trained: dict[str, object]) -> None:
    records = trained["second"].records  # type: ignore[attr-defined]
    keys = (
        ("encoder", "video_l1"),
        ("encoder", "audio_l1"),
        ("encoder", "video_phone_ce"),
        ("denoiser", "l1"),
    )
    for stage, key in keys:
        first, last, ok = _falls(records[stage].train[key])
        assert ok, f"{stage} {key}: first steps {first:.4f}, last steps {last:.4f}"
    # The encoder also beats predicting the average mel on held-out clips.
    evals = records["encoder"].evals
    assert evals["val_video_l1"][-1] < 0.9 * evals["val_mean_l1"][-1]
    assert evals["val_video_l1"][-1] < 0.9 * evals["val_video_l1"][0]
    # The phone head reads open vs closed mouths on held-out clips better than always guessing "aa".
    val = CacheSet(trained["run"] / "cache" / "val", preset("small").video)  # type: ignore[operator]
    labels = np.concatenate([val.phone_labels(i, 100.0) for i in range(len(val))])
    majority = float(np.bincount(labels).max() / len(labels))
    assert evals["val_phone_acc"][-1] > max(0.75, majority + 0.1)


def test_speaker_stage_ends_on_its_best_held_out_state(trained: dict[str, object]) -> None:
    records = trained["second"].records  # type: ignore[attr-defined]
    speaker = records["speaker"]
    cos = speaker.evals["val_cos_v_g"]
    best = speaker.evals["step"][cos.index(max(cos))]
    assert speaker.best_value == max(cos) and speaker.best_step == best == speaker.kept_step
    # What later stages and the checkpoint read is that state.
    state = load_state(trained["run"] / "speaker" / "state.pt")  # type: ignore[operator]
    assert state is not None and "best" in state
    for key, value in state["best"]["speaker"].items():
        assert torch.equal(state["stage"]["speaker"][key], value), key
    # The other stages select nothing: they end on their last step.
    assert records["encoder"].kept_step == records["encoder"].step and records["encoder"].best_step is None
    assert records["denoiser"].kept_step == records["denoiser"].step


def test_denoiser_prior_starts_as_the_encoder_heads_estimate(trained: dict[str, object]) -> None:
    """The prior built from the encoder stage's head, on the cached features, already beats predicting the
    average mel (so the conversion kept the head's estimate) and the log says where it came from."""
    from diffv2s.nn.denoiser import Denoiser
    from lab.training.stages import prior_from_encoder, with_mel_norm

    run_dir: Path = trained["run"]  # type: ignore[assignment]
    run = Run(run_dir)
    cfg = with_mel_norm(run, preset("small"))
    data = CacheSet(run_dir / "cache" / "train", cfg.video)
    feats = FeatureSet(data, run_dir / "features" / "train", with_speaker=False)
    mean, std = data.mel_stats()
    messages: list[str] = []
    init = prior_from_encoder(run, cfg, mean, std, messages.append)
    assert init is not None and not messages
    den = Denoiser(cfg.denoiser, cfg.audio.n_mels, cfg.encoder.embed_dim)
    assert den.prior is not None
    den.prior.load_state_dict(init)
    errs, base = [], []
    norm_mean = torch.as_tensor(cfg.diffusion.normalise(mean), dtype=torch.float32)
    with torch.no_grad():
        for i in range(len(data)):
            target = torch.from_numpy(cfg.diffusion.normalise(data.mel(i))).float()
            f = torch.from_numpy(feats.features(i)).float()[None]
            mu = den.prior_mel(f, torch.ones(f.shape[:2], dtype=torch.bool), len(target))[0]
            errs.append(float((mu - target).abs().mean()))
            base.append(float((norm_mean - target).abs().mean()))
    assert np.mean(errs) < 0.9 * np.mean(base), (np.mean(errs), np.mean(base))


def test_speaker_stage_loss_is_far_below_the_untrained_extractor(trained: dict[str, object]) -> None:
    run_dir: Path = trained["run"]  # type: ignore[assignment]
    cfg = preset("small")
    data = FeatureSet(CacheSet(run_dir / "cache" / "train", cfg.video), run_dir / "features" / "train", False)
    run = Run(run_dir)
    losses = {}
    for name, parts in (("untrained", ("encoder",)), ("trained", ("encoder", "speaker"))):
        stage = SpeakerStage(model_with_stages(run, cfg, 0, parts), data, None)
        stage.speaker.eval()
        total = 0.0
        with torch.no_grad():
            for k in range(4):  # one clip per speaker, four different draws
                idx = [int(np.flatnonzero(data.data.speaker_index == s)[k]) for s in range(3)]
                total += float(speaker_loss(*stage._embed(data, idx, None)))
        losses[name] = total / 4
    chance = 4 * np.log(3)  # four InfoNCE terms over 3 candidates
    assert losses["trained"] < 0.5 * min(losses["untrained"], chance), losses


def test_sigterm_saves_and_resume_continues_from_the_saved_step(trained: dict[str, object]) -> None:
    assert trained["first"].status == "stopped"  # type: ignore[attr-defined]
    assert trained["at_stop"].step == STOP_AT  # type: ignore[attr-defined]
    assert not trained["at_stop"].done  # type: ignore[attr-defined]
    second = trained["second"]
    assert second.status == "done"  # type: ignore[attr-defined]
    record = second.records["denoiser"]  # type: ignore[attr-defined]
    assert record.done and record.step == DENOISER_STEPS
    # One continuous history: the resumed run picked up at STOP_AT + 1, nothing repeated or skipped.
    assert record.train["step"] == [float(s) for s in range(1, DENOISER_STEPS + 1)]
    assert any(f"resumed at step {STOP_AT}" in line for line in trained["lines"])  # type: ignore[attr-defined]
    # The earlier stages were not trained again.
    assert second.records["encoder"].step == ENCODER_STEPS  # type: ignore[attr-defined]


def test_export_of_a_cut_short_run_needs_force_and_says_so(trained: dict[str, object]) -> None:
    assert "has not finished" in trained["refused"] and "--force" in trained["refused"]  # type: ignore[operator]
    forced = trained["forced"]
    assert forced.checkpoint == trained["run"] / "cut-short.pt"  # type: ignore[attr-defined,operator]
    ckpt = load_checkpoint(forced.checkpoint)  # type: ignore[attr-defined]
    assert ckpt.meta["denoiser_finished"] is False
    assert ckpt.meta["steps"]["denoiser"] == STOP_AT
    final = load_checkpoint(trained["run"] / "diffv2s-small.pt")  # type: ignore[operator]
    assert final.meta["denoiser_finished"] is True


def test_curves_are_written(trained: dict[str, object]) -> None:
    run_dir: Path = trained["run"]  # type: ignore[assignment]
    for name in ("encoder/encoder.png", "speaker/speaker.png", "denoiser/denoiser.png", "curves.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name


def test_checkpoint_holds_the_trained_weights(trained: dict[str, object]) -> None:
    run_dir: Path = trained["run"]  # type: ignore[assignment]
    ckpt = load_checkpoint(run_dir / "diffv2s-small.pt")
    assert ckpt.meta["trained"] is True
    assert ckpt.meta["steps"] == {"encoder": ENCODER_STEPS, "speaker": 30, "denoiser": DENOISER_STEPS}
    speaker = stage_record(run_dir / "speaker" / "state.pt")
    assert speaker is not None
    kept = {"encoder": ENCODER_STEPS, "speaker": speaker.best_step, "denoiser": DENOISER_STEPS}
    assert ckpt.meta["kept_steps"] == kept
    assert (run_dir / "diffv2s-small.pt").stat().st_size < 25e6
    assert not any(k.startswith("speaker.encoder.") for k in ckpt.state_dict)
    encoder = load_state(run_dir / "encoder" / "state.pt")["stage"]["encoder"]  # type: ignore[index]
    denoiser = load_state(run_dir / "denoiser" / "state.pt")["stage"]  # type: ignore[index]
    for key, value in encoder.items():
        if value.is_floating_point():
            torch.testing.assert_close(ckpt.state_dict[f"encoder.{key}"], value.half().float())
    # The shipped denoiser is the EMA, not the last raw weights.
    key = "out_proj.weight"
    torch.testing.assert_close(ckpt.state_dict[f"denoiser.{key}"], denoiser["ema"][key].half().float())
    assert not torch.allclose(denoiser["ema"][key], denoiser["denoiser"][key])


def test_checkpoint_carries_the_train_cache_mel_normalisation(trained: dict[str, object]) -> None:
    run_dir: Path = trained["run"]  # type: ignore[assignment]
    cache = CacheSet(run_dir / "cache" / "train", preset("small").video)
    every = np.concatenate([np.asarray(cache.mel(i), np.float64).ravel() for i in range(len(cache))])
    ckpt = load_checkpoint(run_dir / "diffv2s-small.pt")
    diffusion = ckpt.config.diffusion
    assert diffusion.mel_mean == pytest.approx(every.mean(), abs=1e-3)
    assert diffusion.mel_std == pytest.approx(every.std(), abs=1e-3)
    # The denoiser learnt the normalised space: its output bias starts at the normalised band means, so
    # after a few steps it sits near 0, not near the raw log-mel level.
    bias = ckpt.state_dict["denoiser.out_proj.bias"]
    assert abs(diffusion.mel_mean) > 5.0  # the fake cache's log-mel level is about -7.6
    assert abs(float(bias.mean())) < 0.2 * abs(diffusion.mel_mean)


def test_checkpoint_synthesizes_a_real_video(trained: dict[str, object], tmp_path: Path) -> None:
    run_dir: Path = trained["run"]  # type: ignore[assignment]
    synth = Synthesizer.load(run_dir / "diffv2s-small.pt")
    assert synth.info["trained"] is True
    (result,) = synth.synthesize_batch(
        [SynthesisRequest(video=carphone_path(), params=SynthesisParams(steps=2))]
    )
    assert result.error is None
    assert result.waveform is not None and np.isfinite(result.waveform).all()
    assert len(result.waveform) == round(result.video_seconds * result.sample_rate)
    assert float(np.abs(result.waveform).max()) > 0.0


def test_the_command_line_defaults_are_the_recipes() -> None:
    """`diffv2s train` with only --data/--out trains what TrainOptions describes (the shipped recipe):
    the parser and the dataclass each spell the defaults, so a change to one must reach the other."""
    from lab.training.cli import _parser

    args = vars(_parser().parse_args(["--data", "d", "--out", "o"]))
    fields = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.name not in ("data", "out")}
    assert set(args) - {"data", "out"} == set(fields)
    assert {k: args[k] for k in fields} == fields


def test_encoder_share_splits_the_budget_and_a_bad_one_is_refused(
    trained: dict[str, object], tmp_path: Path
) -> None:
    # The smoke run: 30 minutes, no cache time spent (a fake cache), --encoder-share 0.5.
    budgets = Run(trained["run"]).info["budgets"]  # type: ignore[arg-type]
    assert budgets == pytest.approx({"encoder": 0.5 * 1800, "speaker": 0.05 * 1800, "denoiser": 0.4 * 1800})
    for bad in (0.05, 0.9):
        with pytest.raises(InputError, match="--encoder-share must be between 0.1 and 0.8"):
            train(TrainOptions(data=tmp_path, out=tmp_path / "run", encoder_share=bad))
        assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ --init-from


def test_init_from_starts_encoder_and_denoiser_from_the_checkpoint(
    trained: dict[str, object], tmp_path: Path
) -> None:
    """A run fine-tuned from the smoke run's checkpoint starts where that run ended: on the same first
    batch (steps draw their batches from the seed and the step number) its encoder and denoiser losses are
    well below those of the smoke run's own first step, and the new checkpoint records where it began."""
    source = Path(trained["run"]) / "diffv2s-small.pt"  # type: ignore[arg-type]
    opts = dataclasses.replace(fake_run(tmp_path / "warm", source, FEW_STEPS), init_from=source)
    lines: list[str] = []
    result = train(opts, log=lines.append)
    assert result.status == "done" and result.checkpoint is not None
    assert any(
        line.startswith("[encoder] starts from diffv2s-small.pt")
        and "first 200 steps train the heads" in line
        for line in lines
    )
    assert any(line.startswith("[denoiser] starts from diffv2s-small.pt") for line in lines)
    fresh_run = Path(trained["run"])  # type: ignore[arg-type]
    for stage, key in (("encoder", "video_l1"), ("denoiser", "l1")):
        fresh = stage_record(fresh_run / stage / "state.pt")
        warm = stage_record(tmp_path / "warm" / stage / "state.pt")
        assert fresh is not None and warm is not None
        assert warm.train[key][0] < 0.85 * fresh.train[key][0], (
            stage,
            warm.train[key][0],
            fresh.train[key][0],
        )
    meta = load_checkpoint(result.checkpoint).meta
    source_ckpt = load_checkpoint(source)
    assert meta["init_from"]["sha256"] == source_ckpt.sha256
    assert meta["init_from"]["path"] == "diffv2s-small.pt"
    assert meta["init_from"]["steps"] == source_ckpt.meta["steps"]


def test_init_from_refuses_a_missing_or_foreign_checkpoint_before_writing(
    trained: dict[str, object], tmp_path: Path
) -> None:
    from diffv2s.checkpoints.store import save_checkpoint

    out = tmp_path / "run"
    with pytest.raises(InputError, match="--init-from: Checkpoint .* does not exist"):
        train(TrainOptions(data=tmp_path, out=out, init_from=tmp_path / "nope.pt"))
    cfg = preset("small")
    other = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, layers=cfg.encoder.layers + 1))
    save_checkpoint(tmp_path / "other.pt", other, {"w": torch.zeros(1)}, {})
    with pytest.raises(InputError, match=r"another architecture .*encoder\.layers: checkpoint 5, preset 4"):
        train(TrainOptions(data=tmp_path, out=out, init_from=tmp_path / "other.pt"))
    assert not out.exists()
    # A run that began fresh is not resumed as a fine-tune (its stages would mix two starting points).
    fresh = fake_run(tmp_path / "fresh", None, FEW_STEPS)
    source = Path(trained["run"]) / "diffv2s-small.pt"  # type: ignore[arg-type]
    with pytest.raises(InputError, match="did not start from --init-from"):
        train(dataclasses.replace(fresh, init_from=source))


def _encoder_stage(trained: dict[str, object], frozen_steps: int = 0) -> EncoderStage:
    """Stage A over the smoke run's cache, its encoder from the smoke run."""
    run_dir: Path = trained["run"]  # type: ignore[assignment]
    cfg = preset("small")
    model = model_with_stages(Run(run_dir), cfg, 0, ("encoder",))
    data = CacheSet(run_dir / "cache" / "train", cfg.video)
    mean, std = data.mel_stats()
    return EncoderStage(model, data, None, mean, std, batch_clips=3, frozen_steps=frozen_steps)


def test_a_warm_encoder_stays_frozen_while_the_fresh_heads_warm_up(trained: dict[str, object]) -> None:
    """--init-from starts a fresh phone head on a trained encoder: for `frozen_steps` steps only the heads
    learn (the encoder's weights and batch-norm statistics are left as they were), then everything does."""
    stage = _encoder_stage(trained, frozen_steps=2)

    def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    encoder0, phone0 = snapshot(stage.encoder), snapshot(stage.phone_head)
    ce = [stage.train_step(step, lr=1e-3)["video_phone_ce"] for step in range(2)]
    after_frozen = snapshot(stage.encoder)
    assert all(torch.equal(encoder0[k], after_frozen[k]) for k in encoder0)
    assert not torch.equal(phone0["weight"], stage.phone_head.weight)
    assert all(np.isfinite(ce))
    stage.train_step(2, lr=1e-3)
    moved = [k for k, v in stage.encoder.state_dict().items() if not torch.equal(v, after_frozen[k])]
    assert any(k.endswith("weight") for k in moved), "the encoder did not train after the frozen steps"


def test_stage_a_state_from_before_the_two_param_groups_is_refused_with_advice(
    trained: dict[str, object],
) -> None:
    """A stage A state saved when the optimizer had one parameter group cannot be resumed: a typed error
    that says what to do, not PyTorch's mismatch."""
    stage = _encoder_stage(trained)
    state = stage.state_dict()
    stage.load_state_dict(state)  # its own state loads
    groups = state["optimizer"]["param_groups"]
    merged = {**groups[0], "params": [p for g in groups for p in g["params"]]}
    old = {**state, "optimizer": {**state["optimizer"], "param_groups": [merged]}}
    with pytest.raises(InputError, match="saved by an older version .* Start a new --out folder"):
        stage.load_state_dict(old)
