"""Small convolutional building blocks shared by the baselines.

Every network here works on single-channel images ``(B, 1, H, W)`` whose sides are divisible
by ``2 ** levels``; channel widths start at ``width`` and double per level (capped at
``8 * width``). Sizes are not given in the paper (section 4.5 says only that the baselines
follow their original papers and code); they are set per preset in
:class:`u2ad_core.core.config.BaselineConfig`.

- :class:`ConvEncoder`: ``levels`` stride-2 convs (the first straight from the image, so
  nothing runs at full resolution) -> flattened (or, with ``pool=True``, globally averaged)
  features -> linear head ``(B, 1, H, W) -> (B, out_dim)``; :meth:`ConvEncoder.features` returns the last feature
  map too (critic / discriminator features for f-AnoGAN's izi-f and VAE-GAN's feature loss).
- :class:`ConvDecoder`: ``(B, z) -> (B, 1, H, W)``: upsample + conv per level (the last one,
  at full resolution, straight to one channel), sigmoid (images are in [0, 1]).
- :class:`UNet`: skip-connected denoiser ``(B, 1, H, W) -> (B, 1, H, W)`` (or ``in_ch`` ->
  ``out_ch`` channels), optionally conditioned on a diffusion time step (sinusoidal embedding
  added in every block) and on a vector ``(B, cond_dim)`` that joins the time embedding
  (cDDPM's image encoding). Kept
  light for a CPU: two convs per level on the way down, one on the way up, and at full
  resolution a single 3 x 3 conv in and a 1 x 1 conv out (spatial context at full
  resolution comes from the skip connection and the upsampled lower levels).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["check_image_size", "channels", "ConvEncoder", "ConvDecoder", "UNet", "timestep_embedding"]


def check_image_size(image_size: tuple[int, int], levels: int, where: str = "baseline") -> tuple[int, int]:
    """Validate that both image sides are divisible by ``2 ** levels``; return ``(h, w)`` at
    the bottleneck."""
    h, w = (int(s) for s in image_size)
    f = 2 ** int(levels)
    if levels < 1 or h % f or w % f:
        raise ValueError(
            f"{where}: image size {h} x {w} is not divisible by 2**levels = {f}; "
            f"set baselines.levels so that both sides divide (e.g. levels=3 or 4)"
        )
    return h // f, w // f


def channels(width: int, levels: int) -> list[int]:
    """Channels per resolution level: ``width * 2**i`` capped at ``8 * width`` (levels + 1)."""
    return [int(width) * min(2**i, 8) for i in range(levels + 1)]


def _norm(c: int, use: bool = True) -> nn.Module:
    return nn.GroupNorm(min(8, c), c) if use else nn.Identity()


class ConvEncoder(nn.Module):
    """``levels`` stride-2 convs (channels ``width * 2**i``, capped), then a linear head.

    ``(B, in_ch, H, W) -> (B, out_dim)``. ``norm=False`` leaves out normalisation (a WGAN-GP
    critic must not use batch statistics; GroupNorm would be allowed but is not needed).
    ``pool=True`` averages the last feature map over space before the head (as a ResNet does),
    so the head has ``channels`` inputs instead of ``channels x H/2^L x W/2^L``.
    """

    def __init__(self, image_size: tuple[int, int], out_dim: int, width: int = 32, levels: int = 4,
                 in_ch: int = 1, norm: bool = True, pool: bool = False):
        super().__init__()
        bh, bw = check_image_size(image_size, levels, type(self).__name__)
        ch = channels(width, levels - 1)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(levels - 1):
            layers += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1), _norm(ch[i + 1], norm), nn.LeakyReLU(0.2)]
        self.conv = nn.Sequential(*layers)
        self.pool = bool(pool)
        self.flat_dim = ch[-1] * (1 if self.pool else bh * bw)
        self.head = nn.Linear(self.flat_dim, out_dim)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W) -> (head output (B, out_dim), last feature map flattened (B, F))``
        (``F`` = channels when ``pool``)."""
        f = self.conv(x)
        f = f.mean(dim=(2, 3)) if self.pool else f.flatten(1)
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


class ConvDecoder(nn.Module):
    """Linear -> bottleneck map -> ``levels`` x (nearest upsample, 3 x 3 conv; the last one
    to ``out_ch`` channels) -> sigmoid image.

    ``(B, z_dim) -> (B, 1, H, W)`` in [0, 1].
    """

    def __init__(self, image_size: tuple[int, int], z_dim: int, width: int = 32, levels: int = 4,
                 out_ch: int = 1):
        super().__init__()
        self.bh, self.bw = check_image_size(image_size, levels, type(self).__name__)
        ch = channels(width, levels - 1)
        self.c0 = ch[-1]
        self.fc = nn.Linear(z_dim, self.c0 * self.bh * self.bw)
        layers: list[nn.Module] = []
        for i in range(levels - 1, 0, -1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(ch[i], ch[i - 1], 3, padding=1), _norm(ch[i - 1]), nn.LeakyReLU(0.2)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[0], out_ch, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), self.c0, self.bh, self.bw)
        return self.net(torch.nn.functional.leaky_relu(h, 0.2))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer time steps (Ho et al. 2020): ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return emb if dim % 2 == 0 else torch.nn.functional.pad(emb, (0, 1))


class _Block(nn.Module):
    """Two convs (one if ``single``; ``kernel`` x ``kernel``, then 3 x 3) with GroupNorm and
    SiLU; an optional time embedding is added after the first."""

    def __init__(self, c_in: int, c_out: int, t_dim: int = 0, single: bool = False, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.norm1 = _norm(c_out)
        self.conv2 = None if single else nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = None if single else _norm(c_out)
        self.act = nn.SiLU()
        self.t_proj = nn.Linear(t_dim, c_out) if t_dim else None

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        if self.t_proj is not None and t_emb is not None:
            h = h + self.t_proj(t_emb)[:, :, None, None]
        return h if self.conv2 is None else self.act(self.norm2(self.conv2(h)))


class UNet(nn.Module):
    """A small U-Net: ``(B, in_ch, H, W)`` (+ optional time steps ``(B,)``) -> ``(B, out_ch, H, W)``.

    ``levels`` stride-2 poolings, channels from :func:`channels`, skip connections by
    concatenation, nearest upsampling. ``time_dim > 0`` makes it a diffusion denoiser (the
    sinusoidal step embedding goes through a small MLP and is added in every block).
    ``cond_dim > 0`` (needs ``time_dim``) adds a conditioning vector ``cond`` ``(B, cond_dim)``:
    its own MLP maps it to the width of the time embedding and the two are concatenated, so
    every block receives ``[time, cond]`` (the class-embedding path of Dhariwal & Nichol's
    U-Net as cDDPM uses it). ``out_act``: ``"sigmoid"`` (an image in [0, 1]) or ``"none"``
    (predicted noise, logits, or an image in [-1, 1]).
    ``in_ch`` / ``out_ch``: channels of the input and output (default one each: an image;
    DAL maps an edge image to ``K`` class logits).
    """

    def __init__(self, image_size: tuple[int, int], width: int = 32, levels: int = 4,
                 time_dim: int = 0, out_act: str = "sigmoid", cond_dim: int = 0, in_ch: int = 1,
                 out_ch: int = 1):
        super().__init__()
        check_image_size(image_size, levels, type(self).__name__)
        if out_act not in ("sigmoid", "none"):
            raise ValueError(f"UNet out_act must be 'sigmoid' or 'none', got {out_act!r}")
        if cond_dim and not time_dim:
            raise ValueError("UNet cond_dim > 0 needs time_dim > 0 (the vector joins the time embedding)")
        ch = channels(width, levels)
        self.time_dim = int(time_dim)
        self.cond_dim = int(cond_dim)
        t_dim = 4 * width if time_dim else 0
        self.t_mlp = (nn.Sequential(nn.Linear(time_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
                      if time_dim else None)
        self.c_mlp = (nn.Sequential(nn.Linear(cond_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
                      if cond_dim else None)
        e_dim = 2 * t_dim if cond_dim else t_dim
        self.inc = _Block(in_ch, ch[0], e_dim, single=True)
        self.down = nn.ModuleList(_Block(ch[i], ch[i + 1], e_dim) for i in range(levels))
        self.up = nn.ModuleList(_Block(ch[i + 1] + ch[i], ch[i], e_dim, single=True, kernel=1 if i == 0 else 3)
                                for i in reversed(range(levels)))
        self.pool = nn.AvgPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(ch[0], out_ch, 1)
        self.out_act = out_act

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        t_emb = None
        if self.t_mlp is not None:
            if t is None:
                raise ValueError("this UNet is time-conditioned: pass the time steps t (B,)")
            t_emb = self.t_mlp(timestep_embedding(t, self.time_dim))
        if self.c_mlp is not None:
            if cond is None or cond.shape != (len(x), self.cond_dim):
                raise ValueError(f"this UNet is conditioned: pass cond of shape ({len(x)}, {self.cond_dim}), "
                                 f"got {None if cond is None else tuple(cond.shape)}")
            t_emb = torch.cat([t_emb, self.c_mlp(cond)], dim=1)
        h = self.inc(x, t_emb)
        skips = [h]
        for block in self.down:
            h = block(self.pool(h), t_emb)
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = block(torch.cat([self.upsample(h), skips.pop()], dim=1), t_emb)
        y = self.out(h)
        return torch.sigmoid(y) if self.out_act == "sigmoid" else y
