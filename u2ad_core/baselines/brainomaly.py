"""Brainomaly (Siddiquee et al., WACV 2024) and Brainomaly-Diff's diffusion refiner.

**Brainomaly** ("Unsupervised Neurologic Disease Detection Utilizing Unannotated T1-weighted
Brain MR Images"; code ``mahfuzmohammad/Brainomaly``, files ``model.py``, ``solver.py``,
``main.py``, ``data_loader.py``) translates images of an *unlabelled* clinical cohort A into
healthy-looking images, learning from a known healthy set B. Images are scaled to [-1, 1]
(``s = 2x - 1``) as in the original (``Normalize(0.5, 0.5)``). A generator outputs an
*additive map* and the translation is

    M = G(s)            (B, 1, H, W), unbounded
    s_hat = tanh(s + M) (B, 1, H, W) in [-1, 1]

Losses (``solver.py``; W = PatchGAN critic, averaged over its patches; WGAN-GP, Gulrajani
et al. 2017), with ``s_A`` a target batch and ``s_B`` a healthy batch:

    L_D = E[W(s_hat_A)] - E[W(s_B)] + lambda_gp * E[(||grad W(s_mix)||_2 - 1)^2]
    L_G = -E[W(s_hat_A)] + lambda_id * E|s_B - tanh(s_B + G(s_B))|

``s_mix`` = random interpolates of ``s_B`` and ``s_hat_A``. The critic is updated every
batch, the generator when ``(step + 1) % n_critic == 0`` (``n_critic = 2``); lambda_gp 10,
lambda_id 1, Adam lr 1e-4, betas (0.5, 0.999) (``main.py`` defaults; ``train.sh`` changes only
the image size, 192, the iterations, 400k, and the batch, 16). The original "decays" the rate
by ``lr / num_iters_decay`` every ``lr_update_step`` = 1000 iterations over the last 100k:
100 steps of 1e-9, ending at 0.999 x lr: in effect a constant rate, which is used here.

Training is **transductive**: A is the very cohort that is tested, unlabelled (U2AD's S3
adapts on it too). The method is ``paired`` (:class:`u2ad_core.baselines.common.Method`):
the target set comes with the healthy reference set, and
:func:`u2ad_core.baselines.training.baseline_model` maps U2AD's strategies onto the pairs
(S1 healthy-to-healthy; S2 (healthy, cohort) from scratch, the original's setting; S3 the
same starting from S1).

**Anomaly map.** The original scores an image by the mean of ``|s - s_hat| / 2`` over the
image (``solver.py``: ``testAUCInductive``, ``testAUCTransductive``, ``testAUCp``), not by
M: because of the tanh, even a perfectly healthy image needs a non-zero M (``M = atanh(s) -
s`` for ``s_hat = s``), so M is not itself a map of abnormality. Here, as for the other UAD
baselines, the whole slice is translated, ``x_hat = (s_hat + 1) / 2``, and the shared glue
keeps its cord part, so the map ``|x - x_hat|`` in the cord equals the original's
``|s - s_hat| / 2`` there (0 outside the cord).

**Brainomaly-Diff** (seed 003; code ``vashprog/Brainomaly-Diff``, ``diffusion_model.py``,
``diffusion_utils.py``, ``solver.py``) refines the generator's output with a DDPM (Ho et al.
2020), T = 50 steps, linear betas 1e-4 ... 0.02 (not rescaled for the short chain, so the
last step keeps ``abar_T`` = 0.60 of the signal), trained with the usual noise-prediction loss
on ``x_0 = s_hat_A`` (detached):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   L_R = || eps - R(x_t, t) ||^2

Its network (``DiffusionUNet``) is a residual encoder-decoder (conv, residual block,
stride-2 conv, residual block, SAGAN self-attention at H/2 x W/2 (Zhang et al. 2019: query /
key at C/8 channels, no 1/sqrt(d) scale, output ``gamma * attention + x`` with ``gamma`` = 0 at
start), transposed conv, residual block, conv; no skip connections), and **the released
refiner ignores the time step**: ``forward(self, x, t=None)`` never reads ``t``, so one
network must predict the noise at every level without being told which. Its sampler also
starts the reverse chain from the *un-noised* generator output, as if it were ``x_T``. This
module does both properly:

- :class:`Refiner` is that network conditioned on ``t``: a sinusoidal embedding (Ho et al.)
  through a two-layer MLP, projected to the channels and added after the first convolution
  (and its GroupNorm) of every residual block, as in a DDPM U-Net;
- :meth:`BrainomalyDiff.refine` noises the generator's output to step ``steps`` (default: all
  T = 50, the seed's chain) with ``q(x_t | x_0)`` and runs the reverse chain back to step 0,
  ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) R(x_t, t)) / sqrt(alpha_t) + sqrt(beta_t) z``
  (``sigma_t^2 = beta_t`` as in the seed; no noise at the last step).

The map of ``brainomaly_diff`` is ``|x - refined|`` in the cord (the seed:
``|s - refined| / 2``; the refined image is clipped to [0, 1] here). The seed trains G, the
critic and the refiner together (the refiner every 10th iteration, on the current generator's
detached output, with mixed precision); here, as the issue asks, the refiner is trained
*after*, on a finished Brainomaly run (``Method.base``, reached through the run store's init
identity) whose generator stays frozen: the same objective on the converged generator's
outputs instead of a moving target. ``refiner.target = "healthy"`` (project option) trains it
on the healthy batch instead, so that the chain pulls towards healthy images rather than
towards the generator's own outputs.

**Changed for 2D single-channel slices and small sizes** (and why):

- one input channel (the original converts the grey PNGs to 3 equal RGB channels);
- InstanceNorm without running statistics (the original's ``track_running_stats=True``
  makes evaluation use running averages of per-image statistics, a StarGAN leftover: here the
  generator computes the same thing in training and at test);
- U2AD's augmentation (brightness, contrast, noise; ``baselines.augment``) on both sets
  instead of the original's random horizontal flip (a left-right flip of a sagittal spine
  slice swaps anterior and posterior);
- the batch size, epochs and (in ``smoke`` / ``cpu``) the widths, residual blocks and critic
  depth come from the preset (:class:`u2ad_core.core.config.BrainomalyConfig`); ``paper`` has the
  original's sizes (generator 64 channels, 6 residual blocks; critic 64 channels, 6 levels);
- the refiner's self-attention uses ``scaled_dot_product_attention`` with scale 1 (the same
  values as the explicit softmax, without the N x N matrix in memory: N = 16384 at 256 x 256);
- a refiner chain shorter than the seed's 50 steps (the CPU presets: 5, for a 10 x cheaper
  inference) scales the betas by ``50 / T`` (:func:`refiner_betas`) to keep the seed's noise
  level; the CPU presets also put the attention two levels lower (H/8 x W/8: at H/2 x W/2 its
  N x N scores, N = 3072 at 192 x 64, cost seconds per batch on a CPU; measured on one core at
  192 x 64, a refiner pass takes 9 ms per image with the attention at H/4 x W/4, 4 ms at H/8 x W/8).

Shapes: images ``(B, 1, H, W)`` with ``H`` and ``W`` divisible by 4 (generator),
``2 ** d_levels`` (critic) and ``2 ** refiner.levels`` (refiner).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import BaselineConfig, BrainomalyConfig, to_dict

from .common import Method, StepInfo
from .fanogan import critic_step
from .nets import _norm, channels, check_image_size, timestep_embedding

__all__ = ["MapGenerator", "PatchCritic", "Refiner", "Brainomaly", "BrainomalyDiff", "refiner_betas", "METHOD",
           "DIFF_METHOD"]


# --------------------------------------------------------------------------------------
# Brainomaly: generator (additive map) and PatchGAN critic
# --------------------------------------------------------------------------------------
class _INResidual(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` (StarGAN's residual block): ``(B, C, h, w)``."""

    def __init__(self, c: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class MapGenerator(nn.Module):
    """Brainomaly's generator (``model.py``, StarGAN's): ``(B, 1, H, W)`` image in [-1, 1] ->
    additive map ``M`` ``(B, 1, H, W)``, unbounded.

    7 x 7 conv to ``width`` channels, two stride-2 4 x 4 convs (x 2 channels each), ``blocks``
    residual blocks at H/4 x W/4, two stride-2 transposed convs back, 7 x 7 conv to one
    channel; InstanceNorm + ReLU after every conv but the last; no biases.
    """

    def __init__(self, width: int = 64, blocks: int = 6):
        super().__init__()
        c = int(width)
        layers: list[nn.Module] = [nn.Conv2d(1, c, 7, padding=3, bias=False), nn.InstanceNorm2d(c, affine=True),
                                   nn.ReLU()]
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(2 * c, affine=True),
                       nn.ReLU()]
            c *= 2
        layers += [_INResidual(c) for _ in range(int(blocks))]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                       nn.InstanceNorm2d(c // 2, affine=True), nn.ReLU()]
            c //= 2
        layers.append(nn.Conv2d(c, 1, 7, padding=3, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.main(s)


class PatchCritic(nn.Module):
    """Brainomaly's PatchGAN critic (``model.py``): ``levels`` stride-2 4 x 4 convs (channels
    ``width * 2**i``, not capped, LeakyReLU 0.01, no normalisation: WGAN-GP), then a 3 x 3 conv
    to one channel. ``(B, 1, H, W) -> (B, 1, H / 2**levels, W / 2**levels)``: one score per patch.
    """

    def __init__(self, image_size: tuple[int, int], width: int = 64, levels: int = 6):
        super().__init__()
        check_image_size(image_size, levels, "Brainomaly critic (baselines.brainomaly.d_levels)")
        c = int(width)
        layers: list[nn.Module] = [nn.Conv2d(1, c, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        for _ in range(1, int(levels)):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c *= 2
        layers.append(nn.Conv2d(c, 1, 3, padding=1, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.main(s)


class Brainomaly(nn.Module):
    """``generator`` (:class:`MapGenerator`) and ``critic`` (:class:`PatchCritic`).

    ``forward(x)``: ``(B, 1, H, W)`` in [0, 1] -> the healthy-looking translation in [0, 1].
    """

    def __init__(self, image_size: tuple[int, int], cfg: BrainomalyConfig):
        super().__init__()
        check_image_size(image_size, 2, "Brainomaly generator (two stride-2 levels)")
        self.cfg = cfg
        self.generator = MapGenerator(cfg.g_width, cfg.g_blocks)
        self.critic = PatchCritic(image_size, cfg.d_width, cfg.d_levels)

    def translate(self, s: torch.Tensor) -> torch.Tensor:
        """``tanh(s + G(s))``: ``(B, 1, H, W)`` in [-1, 1] -> ``(B, 1, H, W)`` in [-1, 1]."""
        return torch.tanh(s + self.generator(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.translate(x * 2 - 1) + 1) / 2


# --------------------------------------------------------------------------------------
# Brainomaly-Diff: the refiner, conditioned on the time step
# --------------------------------------------------------------------------------------
class _TimeResidual(nn.Module):
    """The seed's residual block (conv, GroupNorm, SiLU, conv, GroupNorm, + x) with the time
    embedding projected to the channels and added after the first GroupNorm:
    ``(B, C, h, w), (B, T) -> (B, C, h, w)``."""

    def __init__(self, c: int, t_dim: int):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(c, c, 3, padding=1), _norm(c)
        self.conv2, self.norm2 = nn.Conv2d(c, c, 3, padding=1), _norm(c)
        self.t_proj = nn.Linear(t_dim, c)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)) + self.t_proj(t_emb)[:, :, None, None])
        return x + self.norm2(self.conv2(h))


class SelfAttention(nn.Module):
    """SAGAN self-attention over the pixels (the seed's ``SelfAttention``): query and key 1 x 1
    convs to ``max(1, C // 8)`` channels, value to C, ``softmax(q^T k)`` without scaling,
    output ``gamma * attention + x`` with ``gamma`` learnt from 0. ``(B, C, h, w)`` -> same."""

    def __init__(self, c: int):
        super().__init__()
        self.query = nn.Conv2d(c, max(1, c // 8), 1)
        self.key = nn.Conv2d(c, max(1, c // 8), 1)
        self.value = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (f(x).flatten(2).transpose(1, 2) for f in (self.query, self.key, self.value))  # (B, hw, .)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, hw, C)
        return self.gamma * out.transpose(1, 2).reshape(b, c, h, w) + x


class Refiner(nn.Module):
    """Brainomaly-Diff's ``DiffusionUNet``, conditioned on the time step: ``(B, 1, H, W)`` noisy
    image, ``(B,)`` steps -> predicted noise ``(B, 1, H, W)``.

    3 x 3 conv to ``width`` channels, residual block; ``levels`` x (stride-2 4 x 4 conv, x 2
    channels capped at 8 x ``width``, residual block); self-attention; ``levels`` x (stride-2
    transposed conv, residual block); 3 x 3 conv to one channel. No skip connections (the
    seed's has none). The seed: ``width`` 64, ``levels`` 1.
    """

    def __init__(self, image_size: tuple[int, int], width: int = 64, levels: int = 1):
        super().__init__()
        check_image_size(image_size, levels, "Brainomaly-Diff refiner (baselines.brainomaly.refiner.levels)")
        ch = channels(width, levels)
        self.t_dim = 4 * int(width)
        self.t_mlp = nn.Sequential(nn.Linear(int(width), self.t_dim), nn.SiLU(), nn.Linear(self.t_dim, self.t_dim))
        self.inc = nn.Conv2d(1, ch[0], 3, padding=1)
        self.res_in = _TimeResidual(ch[0], self.t_dim)
        self.down = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1) for i in range(levels))
        self.res_down = nn.ModuleList(_TimeResidual(ch[i + 1], self.t_dim) for i in range(levels))
        self.attn = SelfAttention(ch[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[i + 1], ch[i], 4, stride=2, padding=1)
                                for i in reversed(range(levels)))
        self.res_up = nn.ModuleList(_TimeResidual(ch[i], self.t_dim) for i in reversed(range(levels)))
        self.out = nn.Conv2d(ch[0], 1, 3, padding=1)
        self.width = int(width)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.t_mlp(timestep_embedding(t, self.width))
        h = self.res_in(F.silu(self.inc(x)), t_emb)
        for conv, res in zip(self.down, self.res_down):
            h = res(F.silu(conv(h)), t_emb)
        h = self.attn(h)
        for conv, res in zip(self.up, self.res_up):
            h = res(F.silu(conv(h)), t_emb)
        return self.out(h)


SEED_TIMESTEPS = 50
"""Brainomaly-Diff's chain length, for which its betas 1e-4 ... 0.02 are given."""


def refiner_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas ``(T,)`` float64: the seed's ``linspace(beta_start, beta_end, T)`` at T = 50;
    a chain of another length scales both ends by ``50 / T`` (capped at 0.999), so that it
    reaches the same noise level (``abar_T`` about 0.60), as AnoDDPM's schedule here does."""
    scale = SEED_TIMESTEPS / int(timesteps)
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), int(timesteps), dtype=torch.float64)


class BrainomalyDiff(Brainomaly):
    """:class:`Brainomaly` + :class:`Refiner` (``refiner``) and the DDPM schedule (buffers
    ``betas``, ``alphas``, ``abar``; not saved). A Brainomaly state dict fills the generator
    and critic."""

    def __init__(self, image_size: tuple[int, int], cfg: BrainomalyConfig):
        super().__init__(image_size, cfg)
        r = cfg.refiner
        if not 1 <= r.steps <= r.timesteps:
            raise ValueError(f"brainomaly.refiner.steps must be in [1, timesteps={r.timesteps}], got {r.steps}")
        if r.target not in ("translated", "healthy"):
            raise ValueError(f"brainomaly.refiner.target must be 'translated' or 'healthy', got {r.target!r}")
        self.refiner = Refiner(image_size, r.width, r.levels)
        betas = refiner_betas(r.timesteps, r.beta_start, r.beta_end)
        for name, v in (("betas", betas), ("alphas", 1 - betas), ("abar", torch.cumprod(1 - betas, 0))):
            self.register_buffer(name, v.float(), persistent=False)

    def q_sample(self, s0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t`` from ``x_0`` ``(B, 1, H, W)`` in [-1, 1], steps ``t`` ``(B,)``, noise ``eps``."""
        a = self.abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * s0 + (1 - a).sqrt() * eps

    @torch.no_grad()
    def refine(self, s0: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Noise ``s0`` ``(B, 1, H, W)`` (in [-1, 1]) to step ``steps`` and run the reverse chain
        back to step 0 (``steps`` refiner evaluations; Gaussian noise from ``generator``)."""
        steps = int(steps or self.cfg.refiner.steps)
        b = len(s0)

        def randn() -> torch.Tensor:
            return torch.randn(s0.shape, generator=generator).to(s0.device)

        xt = self.q_sample(s0, torch.full((b,), steps - 1, dtype=torch.long, device=s0.device), randn())
        for t in range(steps - 1, -1, -1):
            eps = self.refiner(xt, torch.full((b,), t, dtype=torch.long, device=s0.device))
            xt = (xt - self.betas[t] / (1 - self.abar[t]).sqrt() * eps) / self.alphas[t].sqrt()
            if t > 0:
                xt = xt + self.betas[t].sqrt() * randn()
        return xt


# --------------------------------------------------------------------------------------
# Method glue
# --------------------------------------------------------------------------------------
def _gan_config(b: BaselineConfig) -> dict:
    """Brainomaly's hashed configuration: everything but the refiner (a refiner setting does
    not retrain the generator)."""
    return {k: v for k, v in to_dict(b.brainomaly).items() if k != "refiner"}


def _build(cfg: BaselineConfig, image_size):
    return Brainomaly(image_size, cfg.brainomaly)


def _optimizers(model: Brainomaly, cfg: BaselineConfig):
    c = cfg.brainomaly
    kw = dict(lr=c.lr, betas=tuple(c.betas))
    return {"generator": torch.optim.Adam(model.generator.parameters(), **kw),
            "critic": torch.optim.Adam(model.critic.parameters(), **kw)}


def _train_step(model: Brainomaly, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo, *,
                healthy) -> dict[str, float]:
    """One iteration of ``solver.py``: critic on (healthy, translated target), then every
    ``n_critic``-th step the generator (adversarial + identity on the healthy batch)."""
    c = cfg.brainomaly
    s_a, s_b = x * 2 - 1, healthy[0] * 2 - 1
    fake = model.translate(s_a)
    w, gp, d_loss = critic_step(model.critic, opts["critic"], s_b, fake.detach(), c.gp_weight, g)
    out = {"critic": float(d_loss), "wasserstein": float(-w), "gp": float(gp)}
    if (info.step + 1) % max(1, int(c.n_critic)) == 0:
        adv = -model.critic(fake).mean()  # G is unchanged since `fake`: the original recomputes the same
        ident = (s_b - model.translate(s_b)).abs().mean()
        g_loss = adv + c.lambda_id * ident
        opts["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        opts["generator"].step()
        opts["critic"].zero_grad(set_to_none=True)
        out.update(generator=float(adv.detach()), identity=float(ident.detach()))
    return out


def _reconstruct(model: Brainomaly, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model(x)


def _diff_build(cfg: BaselineConfig, image_size):
    return BrainomalyDiff(image_size, cfg.brainomaly)


def _diff_optimizers(model: BrainomalyDiff, cfg: BaselineConfig):
    return {"refiner": torch.optim.Adam(model.refiner.parameters(), lr=cfg.brainomaly.refiner.lr)}


def _diff_train_step(model: BrainomalyDiff, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo, *,
                     healthy) -> dict[str, float]:
    """The refiner's DDPM step on the frozen generator's output (or the healthy batch)."""
    with torch.no_grad():
        s0 = model.translate(x * 2 - 1) if cfg.brainomaly.refiner.target == "translated" else healthy[0] * 2 - 1
    t = torch.randint(0, len(model.betas), (len(s0),), generator=g).to(s0.device)
    eps = torch.randn(s0.shape, generator=g).to(s0.device)
    loss = F.mse_loss(model.refiner(model.q_sample(s0, t, eps), t), eps)
    opts["refiner"].zero_grad(set_to_none=True)
    loss.backward()
    opts["refiner"].step()
    return {"diffusion": float(loss.detach())}


def _diff_reconstruct(model: BrainomalyDiff, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return ((model.refine(model.translate(x * 2 - 1), g) + 1) / 2).clamp(0, 1)


METHOD = Method(
    name="brainomaly", label="Brainomaly", kind="uad", reference="Siddiquee et al. 2024",
    sub_config=_gan_config, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct, paired=True, beyond_paper=True,
)
DIFF_METHOD = Method(
    name="brainomaly_diff", label="Brainomaly-Diff", kind="uad", reference="vashprog/Brainomaly-Diff (GitHub)",
    sub_config=lambda b: b.brainomaly, build=_diff_build, optimizers=_diff_optimizers,
    train_step=_diff_train_step, reconstruct=_diff_reconstruct, paired=True, base="brainomaly", beyond_paper=True,
)
