"""Stage C: the diffusion denoiser on cached frozen encoder features (DiffV2S Sec. 3.3).

x0-prediction with the masked L1 of `diffusion_loss`, the config's noise schedule, AdamW with the loop's
warmup + cosine schedule, gradient clipping and an EMA of the weights (the EMA is what gets shipped).
Conditioning per item: f_v of its (cropped) clip and a speaker embedding that is s_v (vision, what
inference uses) most of the time and otherwise s_a (the prompt-tuned extractor on the true audio) or s_G
(GE2E), so the ablations that swap in an audio-derived embedding stay in distribution. With probability
`cfg.diffusion.cond_dropout` both conditions are replaced by the learned null vectors, which classifier-
free guidance needs. The denoiser's visual prior mu (`cfg.denoiser.prior_subframes`) starts from the visual
encoder stage's mel head (`prior_from_encoder_head`) and is kept an estimate of the mel in its own right by
an auxiliary masked L1 to the target (weight `prior_weight`, conditioned items only), as Grad-TTS does for
its encoder output.

Devices: the stage runs on `device` under `precision` (bf16 autocast; weights, optimiser and EMA float32),
its batches built in `loader_workers` DataLoader processes. Under torchrun (`dist.world` > 1) the denoiser
is wrapped in DistributedDataParallel and `batch_size` is the global batch: every process draws the whole
step's randomness (so the stream does not depend on the process count) and takes its own slice of the
items; each slice's loss is weighted by its share of the global batch's frames, so the averaged gradient is
the one process's gradient of the same global batch, and a run resumes with any process count.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from diffv2s.diffusion import samplers
from diffv2s.diffusion.schedule import diffusion_loss, make_schedule
from diffv2s.model import DiffV2S
from diffv2s.nn.denoiser import Denoiser
from lab.training.batch_feed import StepBatches
from lab.training.batches import crop_start, draw, mel_span, pad_time
from lab.training.devices import Distributed, autocast
from lab.training.features import FeatureSet

EVAL_TIMESTEPS = (50, 200, 400, 600, 800, 950)


def prior_from_encoder_head(
    head: dict[str, torch.Tensor],
    band_mean: np.ndarray,
    band_std: np.ndarray,
    mel_mean: float,
    mel_std: float,
) -> dict[str, torch.Tensor]:
    """The encoder stage's head (r sub-frames x n_mels outputs, per-band normalised log-mel) rewritten as
    weights for the denoiser's prior (the diffusion's globally normalised log-mel): the same estimate in
    other units. log-mel = z * band_std + band_mean; data = (log-mel - mel_mean) / mel_std."""
    weight, bias = head["weight"].float(), head["bias"].float()
    n_mels = len(band_mean)
    r = weight.shape[0] // n_mels
    scale = torch.as_tensor(np.tile(np.asarray(band_std, np.float32) / mel_std, r))
    shift = torch.as_tensor(np.tile((np.asarray(band_mean, np.float32) - mel_mean) / mel_std, r))
    return {"weight": weight * scale[:, None], "bias": bias * scale + shift}


class DenoiserStage:
    name = "denoiser"

    def __init__(
        self,
        model: DiffV2S,
        train: FeatureSet,
        val: FeatureSet | None,
        *,
        mel_mean: np.ndarray | None = None,
        prior_init: dict[str, torch.Tensor] | None = None,
        prior_weight: float = 1.0,
        batch_size: int = 16,
        max_frames: int = 150,
        p_audio_speaker: float = 0.2,
        p_ge2e_speaker: float = 0.2,
        ema_decay: float = 0.999,
        weight_decay: float = 0.01,
        grad_clip: float = 1.0,
        eval_items: int = 16,
        sample_items: int = 8,
        sample_steps: int = 10,
        seed: int = 0,
        device: torch.device | None = None,
        precision: str = "fp32",
        dist: Distributed | None = None,
        loader_workers: int = 0,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.precision = precision
        self.dist = dist or Distributed()
        if batch_size % self.dist.world:
            raise ValueError(
                f"the global batch {batch_size} must split evenly over {self.dist.world} processes"
            )
        self.denoiser = model.denoiser
        self.cfg = model.cfg
        if mel_mean is not None:
            # Start from predicting the average spectrum: the raw log-mel sits around -6, far from the
            # zero a fresh output layer gives, and learning that offset would waste the first steps.
            # (In the diffusion's normalised space: `cfg.diffusion.normalise`.)
            # With a visual prior the prior carries that offset and the output layer adds a correction.
            start = torch.as_tensor(model.cfg.diffusion.normalise(np.asarray(mel_mean, dtype=np.float32)))
            prior = self.denoiser.prior
            with torch.no_grad():
                if prior is None:
                    self.denoiser.out_proj.bias.copy_(start.float())
                else:
                    self.denoiser.out_proj.bias.zero_()
                    prior.bias.copy_(start.float().repeat(self.denoiser.prior_subframes))
        if prior_init is not None:
            if self.denoiser.prior is None:
                raise ValueError("prior_init given but the denoiser has no visual prior")
            self.denoiser.prior.load_state_dict(prior_init)
        self.denoiser.to(self.device)
        self.ema = copy.deepcopy(self.denoiser).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.module: torch.nn.Module = self.denoiser
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.denoiser, device_ids=ids)
        self.schedule = make_schedule(self.cfg.diffusion)
        self.ratio = self.cfg.audio.mel_rate / self.cfg.video.fps
        self.train_set, self.val_set = train, val
        self.batch_size, self.max_frames = batch_size, max_frames
        self.p_audio, self.p_ge2e = p_audio_speaker, p_ge2e_speaker
        self.ema_decay, self.grad_clip = ema_decay, grad_clip
        self.eval_items, self.sample_items, self.sample_steps = eval_items, sample_items, sample_steps
        self.seed = seed
        self.prior_weight = prior_weight
        self.optimizer = torch.optim.AdamW(
            self.denoiser.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=weight_decay
        )
        self.feed = StepBatches(self.step_batch, loader_workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------ data
    def _speaker(self, data: FeatureSet, i: int, u: float) -> np.ndarray:
        assert data.s_v is not None and data.s_a is not None
        if u < self.p_ge2e:
            return data.data.ge2e(i)
        if u < self.p_ge2e + self.p_audio:
            return data.s_a[i]
        return data.s_v[i]

    def batch(
        self, data: FeatureSet, idx: list[int], g: torch.Generator | None, speaker: str = "mixed"
    ) -> dict[str, torch.Tensor]:
        """Padded batch: mel [B, C, T] (normalised: the diffusion's data space), mask [B, T], visual
        [B, Tv, D], visual_mask [B, Tv], speaker [B, S].

        With a generator: random crops of at most max_frames video frames and a random speaker source;
        without: whole utterances (up to max_frames) and `speaker` = "s_v" | "s_a" | "s_g".
        """
        return self._assemble(data, [self._plan(data, i, g, speaker) for i in idx])

    def _plan(
        self, data: FeatureSet, i: int, g: torch.Generator | None, speaker: str
    ) -> tuple[int, int, int, float]:
        """(item, first video frame, video frames, speaker draw u): the item's random draws, made without
        reading its arrays (so a process draws every item of the global batch but loads only its own)."""
        n = int(data.data.n_frames[i])
        length = min(n, self.max_frames)
        v0 = crop_start(g, n, length) if g is not None else 0
        if g is not None:
            u = float(torch.rand((), generator=g))
        else:
            u = {"s_g": 0.0, "s_a": self.p_ge2e, "s_v": 1.0}[speaker]
        return i, v0, length, u

    def _mel_frames(self, data: FeatureSet, plan: tuple[int, int, int, float]) -> int:
        i, v0, length, _ = plan
        m0, m1 = mel_span(v0, v0 + length, self.ratio, data.data.n_mel(i))
        return m1 - m0

    def _assemble(
        self, data: FeatureSet, plans: list[tuple[int, int, int, float]]
    ) -> dict[str, torch.Tensor]:
        vis, mels, spk = [], [], []
        for i, v0, length, u in plans:
            full_mel = data.data.mel(i)
            m0, m1 = mel_span(v0, v0 + length, self.ratio, len(full_mel))
            vis.append(torch.from_numpy(data.features(i)[v0 : v0 + length]))
            mels.append(torch.from_numpy(self.cfg.diffusion.normalise(full_mel[m0:m1])))
            spk.append(torch.from_numpy(np.asarray(self._speaker(data, i, u), np.float32)))
        visual, visual_mask = pad_time(vis)
        mel, mask = pad_time(mels)
        return {
            "mel": mel.transpose(1, 2).contiguous(),
            "mask": mask,
            "visual": visual,
            "visual_mask": visual_mask,
            "speaker": torch.stack(spk),
        }

    def step_batch(self, step: int) -> dict[str, torch.Tensor]:
        """This process's slice of step `step`'s global batch, with its draws: drop [b] (condition
        dropout), t [b], noise [b, C, T], and the global batch's frame counts (`frames`: all items,
        `kept_frames`: items whose condition is kept) that weight the slice's loss."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = draw(g, len(self.train_set), self.batch_size)
        plans = [self._plan(self.train_set, i, g, "mixed") for i in idx]
        lengths = torch.tensor([self._mel_frames(self.train_set, p) for p in plans])
        drop = torch.rand(len(idx), generator=g) < self.cfg.diffusion.cond_dropout
        t = torch.randint(0, self.schedule.timesteps, (len(idx),), generator=g)
        noise = torch.randn((len(idx), self.cfg.audio.n_mels, int(lengths.max())), generator=g)
        per = len(idx) // self.dist.world
        mine = slice(self.dist.rank * per, (self.dist.rank + 1) * per)
        b = self._assemble(self.train_set, plans[mine])
        b["drop"], b["t"] = drop[mine], t[mine]
        b["noise"] = noise[mine, :, : b["mel"].shape[2]].contiguous()
        b["frames"] = lengths.sum()
        b["kept_frames"] = lengths[~drop].sum()
        return b

    # ------------------------------------------------------------------------------------- training
    def train_step(self, step: int, lr: float) -> dict[str, float]:
        b = {k: v.to(self.device, non_blocking=True) for k, v in self.feed.get(step).items()}
        self.denoiser.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        drop = b["drop"]
        cond = (b["visual"], b["visual_mask"], b["speaker"], b["mask"], drop)
        # This slice's share of the global batch's frames (1 for one process; see the module doc).
        share = float(b["mask"].sum()) / max(float(b["frames"]), 1.0)
        keep = ~drop
        kept_share = float(b["mask"][keep].sum()) / max(float(b["kept_frames"]), 1.0)
        with autocast(self.device, self.precision):
            loss = diffusion_loss(
                self.module, b["mel"], b["mask"], self.schedule, cond=cond, t=b["t"], noise=b["noise"]
            ).float()
            total = loss * share * self.dist.world
            prior_l1 = None
            if self.denoiser.prior is not None and self.prior_weight > 0:
                prior_l1 = self._prior_l1(self.denoiser, b, keep=keep).float()
                total = total + self.prior_weight * prior_l1 * kept_share * self.dist.world
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), self.grad_clip)
        self.optimizer.step()
        self._update_ema(step)
        # The global batch's losses (what one process would report), summed over the slices.
        parts = [loss.item() * share] + ([prior_l1.item() * kept_share] if prior_l1 is not None else [])
        parts = self.dist.all_sum(parts, self.device)
        out = {"l1": parts[0]}
        if prior_l1 is not None:
            out["prior_l1"] = parts[1]
        return out

    @staticmethod
    def _prior_l1(denoiser: Denoiser, b: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Masked L1 (data space) between the visual prior and the target mel over the items in `keep`."""
        mel = b["mel"]
        mu = denoiser.prior_mel(b["visual"], b["visual_mask"], mel.shape[2]).transpose(1, 2)
        w = (b["mask"] & keep[:, None])[:, None, :].to(mel.dtype)
        return ((mu - mel).abs() * w).sum() / (w.sum() * mel.shape[1]).clamp(min=1.0)

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        # Short warm-up of the decay so early EMA weights are not dominated by the initialisation.
        decay = min(self.ema_decay, (1.0 + step) / (10.0 + step))
        for e, p in zip(self.ema.parameters(), self.denoiser.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """With the EMA weights on validation clips: the x0 L1 at fixed timesteps and noise, and the L1 of
        mels sampled with DPM-Solver++ (sample_steps) against the true mels, with s_v as inference uses."""
        data = self.val_set
        if data is None:
            return {}
        self.ema.eval()
        idx = list(range(min(len(data), self.eval_items)))
        b = self._to_device(self.batch(data, idx, None, speaker="s_v"))
        keep = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        cond = (b["visual"], b["visual_mask"], b["speaker"], b["mask"], keep)
        g = torch.Generator().manual_seed(1234)
        losses = []
        for t in EVAL_TIMESTEPS:
            tt = torch.full((len(idx),), t, dtype=torch.long, device=self.device)
            noise = torch.randn(b["mel"].shape, generator=g).to(self.device)
            losses.append(
                float(diffusion_loss(self.ema, b["mel"], b["mask"], self.schedule, cond, t=tt, noise=noise))
            )
        out = {"val_l1": float(np.mean(losses))}
        if self.ema.prior is not None:
            # In log-mel units like val_sample_l1, so the two read side by side.
            prior = self._prior_l1(self.ema, b, keep=~keep)
            out["val_prior_l1"] = float(prior) * self.cfg.diffusion.mel_std
        n = min(len(idx), self.sample_items)
        if n:
            out["val_sample_l1"] = self.sample_l1(data, idx[:n])
        return out

    def sample_l1(self, data: FeatureSet, idx: list[int], speaker: str = "s_v") -> float:
        """Masked L1 between DPM-Solver++ samples (EMA weights) and the true log-mels of `idx`, in log-mel
        units (both denormalised)."""
        b = self._to_device(self.batch(data, idx, None, speaker=speaker))
        mask = b["mask"]
        keep = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        lengths = [int(v) for v in mask.sum(1)]
        gens = [torch.Generator().manual_seed(100 + k) for k in range(len(idx))]
        noise = samplers.initial_noise(lengths, b["mel"].shape[1], gens, device=self.device)

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.ema(x_t, t, b["visual"], b["visual_mask"], b["speaker"], mask, keep)

        x0 = samplers.sample_dpmpp_2m(denoise, noise, self.schedule, self.sample_steps, mask)
        norm = self.cfg.diffusion
        w = mask[:, None, :].float()
        err = (norm.denormalise(x0) - norm.denormalise(b["mel"])).abs()
        return float((err * w).sum() / (w.sum() * x0.shape[1]))

    def _to_device(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in b.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "denoiser": self.denoiser.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.denoiser.load_state_dict(state["denoiser"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
