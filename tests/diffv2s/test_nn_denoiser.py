"""Denoiser: shapes, per-item independence (padding, batch), condition dropout, conditioning resampling."""

from __future__ import annotations

import pytest
import torch

from diffv2s.config import DenoiserConfig, preset
from diffv2s.nn.denoiser import Denoiser, resample_to_frames

torch.set_num_threads(1)

CFG = DenoiserConfig(layers=2, width=64, heads=4)
N_MELS, DV, RATIO = 20, 24, 3.445


def _denoiser(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    den = Denoiser(CFG, n_mels=N_MELS, visual_dim=DV, speaker_dim=256, frame_ratio=RATIO).eval()
    with torch.no_grad():  # non-zero null vectors, as after training
        den.null_visual.normal_()
        den.null_speaker.normal_()
    return den


def _masks(lengths: list[int], t_max: int) -> torch.Tensor:
    return torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]


def test_shapes_and_padded_outputs_are_zero() -> None:
    den = _denoiser()
    mask = _masks([30, 22], 30)
    vmask = _masks([9, 7], 9)
    out = den(
        torch.randn(2, N_MELS, 30),
        torch.tensor([0.0, 999.0]),
        torch.randn(2, 9, DV),
        vmask,
        torch.randn(2, 256),
        mask,
    )
    assert out.shape == (2, N_MELS, 30)
    assert torch.isfinite(out).all()
    assert (out[1, :, 22:] == 0).all()
    assert (out[1, :, :22] != 0).any()


def test_item_output_independent_of_padding_and_batch() -> None:
    den = _denoiser()
    torch.manual_seed(1)
    mel_lens, vid_lens = [31, 52, 17], [9, 15, 5]
    items = [
        (torch.randn(1, N_MELS, n), torch.randn(1, v, DV), torch.randn(1, 256), torch.rand(1) * 999)
        for n, v in zip(mel_lens, vid_lens, strict=True)
    ]
    t_max, v_max = max(mel_lens), max(vid_lens)
    x = torch.full((3, N_MELS, t_max), 4.0)
    vis = torch.full((3, v_max, DV), -9.0)  # garbage in the padding on purpose
    for i, (xi, vi, _, _) in enumerate(items):
        x[i, :, : xi.shape[2]] = xi[0]
        vis[i, : vi.shape[1]] = vi[0]
    spk = torch.cat([it[2] for it in items])
    t = torch.cat([it[3] for it in items])
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        batched = den(x, t, vis, _masks(vid_lens, v_max), spk, _masks(mel_lens, t_max), drop)
        for i, (xi, vi, si, ti) in enumerate(items):
            n, v = xi.shape[2], vi.shape[1]
            alone = den(
                xi,
                ti,
                vi,
                torch.ones(1, v, dtype=torch.bool),
                si,
                torch.ones(1, n, dtype=torch.bool),
                drop[i : i + 1],
            )
            torch.testing.assert_close(batched[i, :, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_drop_cond_is_per_item_and_ignores_the_condition() -> None:
    den = _denoiser()
    torch.manual_seed(2)
    x = torch.randn(1, N_MELS, 20).expand(2, -1, -1)
    t = torch.tensor([10.0, 10.0])
    vis = torch.randn(1, 6, DV).expand(2, -1, -1)
    spk = torch.randn(1, 256).expand(2, -1)
    vmask = torch.ones(2, 6, dtype=torch.bool)
    mask = torch.ones(2, 20, dtype=torch.bool)
    with torch.no_grad():
        cond = den(x, t, vis, vmask, spk, mask)
        mixed = den(x, t, vis, vmask, spk, mask, torch.tensor([True, False]))
        # Unconditional output must not depend on the visual features or speaker given.
        other = den(x, t, torch.randn(2, 6, DV), vmask, torch.randn(2, 256), mask, torch.tensor([True, True]))
    torch.testing.assert_close(mixed[1], cond[1])
    assert not torch.allclose(mixed[0], cond[0], atol=1e-4)
    torch.testing.assert_close(other[0], mixed[0], atol=1e-5, rtol=1e-5)


def _one_item(seed: int, t: float, mel_frames: int = 15, video_frames: int = 5) -> list[torch.Tensor]:
    """Denoiser arguments of one full-length item (no drop_cond)."""
    torch.manual_seed(seed)
    return [
        torch.randn(1, N_MELS, mel_frames),
        torch.tensor([t]),
        torch.randn(1, video_frames, DV),
        torch.ones(1, video_frames, dtype=torch.bool),
        torch.randn(1, 256),
        torch.ones(1, mel_frames, dtype=torch.bool),
    ]


def test_output_depends_on_each_input() -> None:
    den = _denoiser()
    args = _one_item(3, 100.0)
    with torch.no_grad():
        base = den(*args)
        for idx in (0, 2, 4):
            changed = list(args)
            changed[idx] = torch.randn_like(args[idx])
            assert not torch.allclose(den(*changed), base, atol=1e-4), idx
        changed = list(args)
        changed[1] = torch.tensor([100.5])  # a continuous timestep is accepted and matters
        assert not torch.allclose(den(*changed), base, atol=1e-6)


def test_resample_to_frames_follows_the_fixed_rate() -> None:
    # Video features = their own index; at 2 mel frames per video frame, mel frame j reads j/2 - 0.25.
    visual = torch.arange(4.0)[None, :, None].expand(2, -1, 1).contiguous()
    vmask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    out = resample_to_frames(visual, vmask, 8, 2.0)[..., 0]
    expected0 = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.0, 2.0, 2.0])  # clamped to its last valid frame
    expected1 = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], expected1)


def test_a_few_steps_of_training_reduce_the_loss() -> None:
    torch.manual_seed(4)
    den = Denoiser(CFG, n_mels=N_MELS, visual_dim=DV, frame_ratio=RATIO).train()
    x0 = torch.randn(2, N_MELS, 24)
    vis, spk = torch.randn(2, 7, DV), torch.randn(2, 256)
    vmask, mask = torch.ones(2, 7, dtype=torch.bool), torch.ones(2, 24, dtype=torch.bool)
    opt = torch.optim.Adam(den.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        pred = den(x0 + torch.randn_like(x0) * 0.5, torch.tensor([50.0, 50.0]), vis, vmask, spk, mask)
        loss = (pred - x0).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", ["small", "paper"])
def test_presets_build(name: str) -> None:
    cfg = preset(name)
    with torch.device("meta"):
        den = Denoiser(
            cfg.denoiser,
            cfg.audio.n_mels,
            cfg.encoder.embed_dim,
            cfg.speaker.embed_dim,
            cfg.audio.mel_rate / cfg.video.fps,
        )
    assert len(den.layers) == cfg.denoiser.layers
    assert den.layers[0].self_attn.q_proj.weight.shape == (cfg.denoiser.width, cfg.denoiser.width)
    if name == "paper":
        assert (cfg.denoiser.layers, cfg.denoiser.width, cfg.denoiser.heads) == (8, 512, 4)


def test_visual_prior_reads_sub_frames_at_their_own_rate() -> None:
    # Features = the video frame's index v; the head writes sub-frame s of frame v as r * v + s, i.e. the
    # sub-frame's own index. Mel frame j must read sub-frame position (j + 0.5) * r / ratio - 0.5, clamped
    # to the item's last valid sub-frame.
    den = _denoiser()
    r = den.prior_subframes
    assert den.prior is not None and r == 4
    with torch.no_grad():
        den.prior.weight.zero_()
        den.prior.weight[:, 0] = float(r)
        den.prior.bias.copy_(torch.arange(r, dtype=torch.float32).repeat_interleave(N_MELS))
    visual = torch.zeros(2, 6, DV)
    visual[..., 0] = torch.arange(6.0)
    vmask = _masks([6, 4], 6)
    with torch.no_grad():
        mu = den.prior_mel(visual, vmask, 20)  # [2, 20, N_MELS]
    j = torch.arange(20.0)
    pos = (j + 0.5) * r / RATIO - 0.5
    torch.testing.assert_close(mu[0, :, 3], pos.clamp(0, 6 * r - 1))
    torch.testing.assert_close(mu[1, :, 3], pos.clamp(0, 4 * r - 1))


def test_prior_is_fed_in_and_the_output_corrects_it() -> None:
    den = _denoiser()
    args = _one_item(5, 900.0)
    with torch.no_grad():
        base = den(*args)
        mu = den.prior_mel(args[2], args[3], 15).transpose(1, 2)
        assert den.prior is not None
        den.prior.bias.add_(1.0)  # the prior moves by exactly 1 ...
        moved = den(*args)
    shift = moved - base
    # ... and the output by 1 plus whatever the Transformer makes of its changed input (not nothing).
    assert torch.allclose(den.prior_mel(args[2], args[3], 15).transpose(1, 2), mu + 1.0)
    assert not torch.allclose(shift, torch.ones_like(shift), atol=1e-4)
    with torch.no_grad():
        den.out_proj.weight.zero_()
        den.out_proj.bias.zero_()
        only_prior = den(*args)
    torch.testing.assert_close(only_prior, mu + 1.0)


def test_prior_can_be_switched_off_for_older_checkpoints() -> None:
    from diffv2s.config import ModelConfig

    den = Denoiser(DenoiserConfig(layers=1, width=32, heads=4, prior_subframes=0), N_MELS, DV)
    assert den.prior is None and den.in_proj.in_features == N_MELS
    with pytest.raises(RuntimeError, match="no visual prior"):
        den.prior_mel(torch.randn(1, 3, DV), torch.ones(1, 3, dtype=torch.bool), 10)
    # A stored config written before the field existed means the layout those checkpoints have.
    stored = ModelConfig().to_dict()
    assert stored["denoiser"].pop("prior_subframes") == 4
    assert ModelConfig.from_dict(stored).denoiser.prior_subframes == 0
    stored["denoiser"]["prior_subframes"] = 2
    assert ModelConfig.from_dict(stored).denoiser.prior_subframes == 2


def test_prior_starts_as_the_encoder_heads_estimate_in_diffusion_units() -> None:
    import numpy as np

    from lab.training.denoiser_stage import prior_from_encoder_head

    torch.manual_seed(6)
    r = 4
    head = torch.nn.Linear(DV, r * N_MELS)
    band_mean, band_std = np.random.default_rng(0).normal(-6, 1, N_MELS), np.linspace(0.5, 3.0, N_MELS)
    mel_mean, mel_std = -5.5, 2.2
    prior = torch.nn.Linear(DV, r * N_MELS)
    prior.load_state_dict(prior_from_encoder_head(head.state_dict(), band_mean, band_std, mel_mean, mel_std))
    feats = torch.randn(7, DV)
    with torch.no_grad():
        z = head(feats).reshape(7, r, N_MELS)  # per-band normalised, as the encoder stage trains it
        log_mel = z * torch.tensor(band_std).float() + torch.tensor(band_mean).float()
        got = prior(feats).reshape(7, r, N_MELS)
    torch.testing.assert_close(got, (log_mel - mel_mean) / mel_std, atol=1e-5, rtol=1e-5)
