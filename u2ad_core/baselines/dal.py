"""DAL lite: disentangled anatomy learning (Yang et al. 2025), built from the paper's description.

Reference: T. Yang, X. Wang, H. Liu, G. Gong, L.-M. Wu, Y.-P. Wang, L. Wang, "Unsupervised
Anomaly Detection in Brain MRI via Disentangled Anatomy Learning", arXiv:2512.21924 (2025).
Its repository holds only a README ("The full code will be released soon"), so there is no
code, equation or size to follow: this module implements the abstract's description, and every
choice the description leaves open is listed (numbered, with the reason) at the end of this
docstring. Sizes are in :class:`u2ad_core.core.config.DALConfig` (``preset.baselines.dal``).

What the paper describes (abstract) and what is built here
-----------------------------------------------------------
A slice ``x`` ``(B, 1, H, W)`` in [0, 1] is decoupled into an imaging-invariant *anatomical
image* and *imaging information* (the disentangled representation module, constrained by
anatomical priors and a differentiable one-hot encoding); the anatomy is then *restored from
the high-frequency edges of the anatomical image* and *recoupled* with the imaging information
into a pseudo-healthy image (PHI) (the edge-to-image restoration module). Lesion pixels reach
the PHI only through the edges, so fewer of them propagate; the anomaly map is the residual
between the input and its PHI.

1. Disentangle. An anatomy U-Net gives class logits ``l = E(x)`` ``(B, K, H, W)``; the
   differentiable one-hot operator

       P = softmax(l / tau),    A = onehot(argmax_k P) + (P - sg(P))

   (``sg`` = stop-gradient) is exactly one-hot in the forward pass and has the softmax's
   gradient in the backward pass: ``A`` ``(B, K, H, W)`` is the anatomical image. The imaging
   information ``z`` ``(B, 2K)`` is what each class looks like in this slice, the intensity
   mean and standard deviation over the class's pixels, shrunk towards learnt defaults
   ``mu_k, sigma_k`` by ``c`` = ``prior_count`` pseudo-pixels (a class absent from the slice
   gets its default)::

       n_k = sum A_k,   m_k = (sum A_k x + c mu_k) / (n_k + c),
       s_k^2 = (sum A_k (x - m_k)^2 + c sigma_k^2) / (n_k + c),    z = (m_1..m_K, s_1..s_K)

2. Anatomical prior. Class 0 is tied to the cord mask ``roi`` by a binary cross-entropy on its
   probability ``P_0`` (training only; inference reads the image alone).
3. Edge-to-image restoration. ``e = edges(A)`` ``(B, 1, H, W)`` is 1 where a pixel has a pixel
   of another class among its 8 neighbours (a 2-pixel-wide boundary map, no intensity); a
   restoration U-Net gives logits ``G(e)`` ``(B, K, H, W)`` and the same operator the restored
   anatomy ``A_hat``.
4. Recoupling. One decoder paints the class means on an anatomy, ``p = sum_k anatomy_k m_k``,
   and adds a one-channel 3 x 3 conv of ``[anatomy, p]`` scaled and shifted by ``z``::

       D(anatomy, z) = p + (1 + gamma(z)) conv([anatomy, p]) + beta(z),    PHI = D(A_hat, z)

   ``(B, 1, H, W)``; ``gamma``, ``beta``: one linear map ``(B, 2K) -> (B, 2)``.

Training (healthy slices only; every term a pixel mean)::

    L_dis = |D(A, z) - x|_1 + w_prior BCE(P_0, roi)                 (trains E, D, mu, sigma)
    L_res = w_phi |D(A_hat, z) - x|_1 + w_res CE(G(e), argmax A)     (trains G, D)

with ``A`` detached where it feeds the restoration branch (``e``, the CE target) and ``z``, so
``L_res`` never reaches ``E``. A step minimises ``L_dis + L_res`` (``alternate=False``, the
``paper`` preset) or, with ``alternate=True`` (the CPU presets), ``L_dis`` on even steps and
``L_res`` on odd ones, ``E`` then running forward only (:func:`step_part`).
Inference: ``PHI`` (clipped to [0, 1]) is the reconstruction; the shared glue
(:func:`u2ad_core.baselines.common.anomaly_maps`) keeps its cord part and the anomaly map is
``|x - PHI|`` inside the cord, zero outside, as for the other reconstruction baselines.
Deterministic: no noise is drawn, in training or at inference (the generator is unused).

Changed for 2D cervical-cord slices and small sizes
----------------------------------------------------
The paper works on brain MRI of nine public datasets; here single 2D sagittal T2 slices of
the phantom, the whole slice reconstructed and its cord part used (the protocol of the other
baselines, paper Appendix B.1), the anatomical prior is the cord mask instead of brain
priors, the networks are the project's small U-Net (:class:`.nets.UNet`, the shared
``width`` / ``levels`` of :class:`u2ad_core.core.config.BaselineConfig`) and the CPU presets
alternate the two modules' updates, so that a CPU trains it in about the time of the DAE and
AnoDDPM baselines (two U-Nets instead of one: measured on one core, an epoch takes about as
long as AnoDDPM's and 1.4-2x DAE's).

Design choices inferred from the description (for the book page)
-----------------------------------------------------------------
1. **One-hot operator: straight-through softmax, no Gumbel noise, temperature 1.** The abstract
   names only "a differentiable one-hot encoding operator"; straight-through gives an exactly
   one-hot anatomy (no intensity can hide in soft values, cf. the binarised anatomy of SDNet,
   Chartsias et al. 2019) and, without noise, a deterministic PHI, so maps need no sampling.
2. **K = 4 anatomy classes.** A cervical sagittal slice has four tissue groups that matter
   (cord, CSF, bone/disc, the rest), as a brain has four (CSF, grey matter, white matter,
   background); more classes would let the one-hot image quantise intensity finely enough to
   copy a lesion.
3. **Imaging information = per-class intensity mean and standard deviation (2K numbers), shrunk
   to learnt defaults.** The abstract does not say what the imaging information is; a code of
   class-wise statistics is global (it cannot carry a local lesion), needs no extra encoder
   network, and can be read on a plot. The shrinkage keeps a class absent from a slice usable
   when the restored anatomy brings it back.
4. **Anatomical prior = the cord mask on class 0, a training loss only.** Brain atlases do not
   exist for the phantom; the training glue passes the cord ROI to every method (the CSF mask
   is all zeros on data without labels), and a loss rather than an input keeps inference on
   the image alone.
5. **Edges = class boundaries of the one-hot anatomy (8-neighbourhood), one binary channel.**
   "High-frequency edge information of anatomical images": the boundary map is the
   high-frequency part of a piecewise-constant image and holds no intensity. One channel (not
   one per class) so that the network must restore which class fills each region: per-class
   edges would hand it the classes.
6. **Restoration target: the input's own anatomy (cross-entropy to argmax A), plus the PHI's L1
   through the decoder.** "Restoring the anatomical representation" suggests supervision in
   anatomy space; the end-to-end L1 makes the restored anatomy the one the decoder needs.
7. **Stop-gradient between the modules.** The anatomy feeding the restoration branch and the
   statistics is detached, so the restoration loss cannot reshape the anatomy into something
   easy to restore (e.g. fewer classes); the anatomy is learnt from the reconstruction and the
   prior only.
8. **One small decoder for both paths: class means painted on the anatomy, plus one 3 x 3 conv
   scaled and shifted by the imaging code.** "Recoupling the disentangled imaging information"
   with the same decoder that reconstructs the disentangled pair makes the PHI an image of the
   same kind; painting the means puts the imaging information where the anatomy says, and the
   single conv (receptive field 3 x 3, no hidden layer) adds only blending at class boundaries,
   so the decoder cannot invent structure (a two-layer decoder of 8 channels at full
   resolution cost about half a U-Net's training step on the CPU).
9. **L1 losses, all weights 1, Adam (lr 1e-4; 1e-3 in the CPU presets).** No loss, weight or
   optimiser is given; L1 is the usual reconstruction loss of anatomy/modality disentanglement
   (SDNet, Chartsias et al. 2019).
10. **No explicit invariance loss.** The abstract attributes imaging invariance to the
    disentanglement itself; the one-hot bottleneck plus the intensity augmentation shared by
    every baseline (brightness, contrast, noise; paper 4.3) stand in for it, and a second
    encoder pass per step would double its cost.
11. **Anomaly map = |x - PHI| in the cord, no method-specific post-processing.** The abstract
    says only "analyzing differences between images"; the shared scoring (erosion, components,
    curve along the cord) then applies as for every baseline.
12. **Both modules trained together from the start; on CPU their updates alternate.** The
    abstract gives no schedule. Because of the stop-gradient (7) the two loss groups share only
    the decoder, so alternating steps apply the two gradients in turn; each step then runs one
    U-Net backward pass instead of two and one decoder pass instead of two (the ``paper``
    preset keeps the joint step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import BaselineConfig, DALConfig

from .common import Method, StepInfo
from .nets import UNet

__all__ = ["PARTS", "straight_through_onehot", "class_labels", "anatomy_edges", "class_statistics", "Recoupler",
           "DALOutput", "DAL", "dal_losses", "step_part", "METHOD"]

PARTS = ("both", "disentangle", "restore")
"""What one training step updates: every term, or one module's terms (``alternate``)."""


def class_labels(t: torch.Tensor) -> torch.Tensor:
    """Argmax over the class axis: ``(B, K, H, W)`` -> ``(B, H, W)`` long (no gradient).

    Computed channels-last: on a CPU, ``argmax(dim=1)`` of an NCHW tensor is several times
    slower than a contiguous reduction over the last axis.
    """
    return t.detach().permute(0, 2, 3, 1).contiguous().argmax(-1)


def straight_through_onehot(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiable one-hot operator: ``(B, K, H, W)`` logits -> ``(A, P)``.

    ``P = softmax(logits / temperature)`` over the class axis; ``A = onehot(argmax P) + (P - sg(P))``
    equals the one-hot of the argmax in value (``P - sg(P)`` is exactly 0) and has the
    gradient of ``P``.
    """
    p = torch.softmax(logits / float(temperature), dim=1)
    hard = torch.zeros_like(p).scatter_(1, class_labels(p).unsqueeze(1), 1.0)
    return hard + (p - p.detach()), p


def anatomy_edges(labels: torch.Tensor) -> torch.Tensor:
    """Class boundaries of an anatomy given as labels ``(B, H, W)`` -> ``(B, 1, H, W)`` in {0, 1}.

    A pixel is an edge when a pixel of another class lies in its 3 x 3 neighbourhood, i.e.
    when the largest and smallest label there differ (outside the image counts as nothing,
    so borders are not edges).
    """
    lab = labels.unsqueeze(1).float()
    hi = F.max_pool2d(lab, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-lab, 3, stride=1, padding=1)
    return (hi > lo).float()


def class_statistics(x: torch.Tensor, anatomy: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                     count: float) -> torch.Tensor:
    """Imaging information ``z`` ``(B, 2K)``: per class, the intensity mean then the standard
    deviation of ``x`` ``(B, 1, H, W)`` over the pixels of ``anatomy`` ``(B, K, H, W)``, each
    shrunk to the defaults ``mu``, ``sigma`` ``(K,)`` by ``count`` pseudo-pixels."""
    a = anatomy.detach()
    n = a.sum((2, 3))
    c = float(count)
    m = ((a * x).sum((2, 3)) + c * mu) / (n + c).clamp_min(1e-6)
    var = ((a * (x - m[:, :, None, None]) ** 2).sum((2, 3)) + c * sigma ** 2) / (n + c).clamp_min(1e-6)
    return torch.cat([m, var.clamp_min(1e-8).sqrt()], dim=1)


class Recoupler(nn.Module):
    """The recoupling decoder ``D(anatomy, z)``: ``(B, K, H, W)``, ``(B, 2K)`` -> ``(B, 1, H, W)``.

    ``p = sum_k anatomy_k m_k`` (the class means of ``z`` painted on the anatomy), a one-channel
    3 x 3 conv ``r = conv([anatomy, p])`` for the blending at class boundaries, and a scale and
    shift from ``z``: ``D = p + (1 + gamma(z)) r + beta(z)`` (it starts as ``p``: the conv and
    the linear map are zero-initialised).
    """

    def __init__(self, n_classes: int):
        super().__init__()
        self.k = int(n_classes)
        self.conv = nn.Conv2d(self.k + 1, 1, 3, padding=1)
        self.film = nn.Linear(2 * self.k, 2)
        for layer in (self.conv, self.film):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, anatomy: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        p = (anatomy * z[:, :self.k, None, None]).sum(1, keepdim=True)
        r = self.conv(torch.cat([anatomy, p], dim=1))
        gamma, beta = self.film(z)[:, :, None, None].unbind(1)
        return p + (1 + gamma[:, None]) * r + beta[:, None]


@dataclass
class DALOutput:
    """Everything one pass computes (shapes for a batch of B slices, K classes), for plots.

    logits, probs, anatomy: ``(B, K, H, W)`` (anatomy one-hot); z: ``(B, 2K)``; edges
    ``(B, 1, H, W)``; restore_logits, restored: ``(B, K, H, W)``; recon: ``D(A, z)`` and phi:
    ``D(A_hat, z)``, ``(B, 1, H, W)``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    anatomy: torch.Tensor
    z: torch.Tensor
    edges: torch.Tensor
    restore_logits: torch.Tensor
    restored: torch.Tensor
    recon: torch.Tensor
    phi: torch.Tensor


class DAL(nn.Module):
    """DAL lite: anatomy U-Net ``E``, restoration U-Net ``G`` (edges -> class logits), decoder ``D``.

    ``forward(x)`` ``(B, 1, H, W)`` in [0, 1] -> :class:`DALOutput`; ``phi(x)`` the
    pseudo-healthy image ``(B, 1, H, W)`` clipped to [0, 1].
    """

    def __init__(self, image_size: tuple[int, int], cfg: DALConfig, width: int = 32, levels: int = 4):
        super().__init__()
        if cfg.n_classes < 2:
            raise ValueError(f"dal.n_classes must be at least 2 (class 0 is the cord), got {cfg.n_classes}")
        if cfg.temperature <= 0:
            raise ValueError(f"dal.temperature must be positive, got {cfg.temperature}")
        self.cfg = cfg
        k = int(cfg.n_classes)
        self.anatomy_net = UNet(image_size, width, levels, out_act="none", in_ch=1, out_ch=k)
        self.restore_net = UNet(image_size, width, levels, out_act="none", in_ch=1, out_ch=k)
        self.decoder = Recoupler(k)
        self.mu = nn.Parameter(torch.linspace(0.2, 0.8, k))  # default class means (learnt)
        self.log_sigma = nn.Parameter(torch.full((k,), math.log(0.1)))  # default class stds (learnt)

    def disentangle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` -> ``(logits, P, A, z)``: anatomy logits, probabilities, one-hot anatomy
        ``(B, K, H, W)`` and imaging information ``(B, 2K)``."""
        logits = self.anatomy_net(x)
        a, p = straight_through_onehot(logits, self.cfg.temperature)
        z = class_statistics(x, a, self.mu, self.log_sigma.exp(), self.cfg.prior_count)
        return logits, p, a, z

    def restore(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anatomy labels ``(B, H, W)`` (:func:`class_labels` of the one-hot anatomy) ->
        ``(edges (B, 1, H, W), logits, restored one-hot anatomy (B, K, H, W))``."""
        e = anatomy_edges(labels).to(self.mu.dtype)
        logits = self.restore_net(e)
        return e, logits, straight_through_onehot(logits, self.cfg.temperature)[0]

    def forward(self, x: torch.Tensor) -> DALOutput:
        logits, p, a, z = self.disentangle(x)
        e, r_logits, a_hat = self.restore(class_labels(a))
        return DALOutput(logits, p, a, z, e, r_logits, a_hat, self.decoder(a, z), self.decoder(a_hat, z))

    @torch.no_grad()
    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """Pseudo-healthy image ``(B, 1, H, W)`` in [0, 1] of ``x`` ``(B, 1, H, W)``."""
        _, _, a, z = self.disentangle(x)
        return self.decoder(self.restore(class_labels(a))[2], z).clamp(0, 1)


def dal_losses(model: DAL, x: torch.Tensor, roi: torch.Tensor, part: str = "both") -> dict[str, torch.Tensor]:
    """The loss terms of one step and their weighted sum ``"loss"`` (scalar tensors).

    ``x``, ``roi`` ``(B, 1, H, W)``. ``part="disentangle"``: ``recon`` = ``|D(A, z) - x|_1`` and
    ``prior`` = BCE of the class-0 probability against ``roi`` (they train ``E``, ``D``, the
    class defaults); ``part="restore"``: ``phi`` = ``|D(A_hat, z) - x|_1`` and ``restore`` =
    CE of the restoration logits against ``argmax A`` (they train ``G``, ``D``; ``E`` runs
    without gradient); ``"both"``: all four. Pixel means.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    cfg = model.cfg
    terms: dict[str, torch.Tensor] = {}
    with torch.set_grad_enabled(torch.is_grad_enabled() and part != "restore"):
        logits, _, a, z = model.disentangle(x)
    loss = x.new_zeros(())
    if part != "restore":
        terms["recon"] = (model.decoder(a, z) - x).abs().mean()
        tau = cfg.temperature
        log_all = torch.logsumexp(logits / tau, dim=1)
        log_p0 = logits[:, 0] / tau - log_all
        log_not0 = torch.logsumexp(logits[:, 1:] / tau, dim=1) - log_all
        terms["prior"] = -(roi[:, 0] * log_p0 + (1 - roi[:, 0]) * log_not0).mean()
        loss = loss + terms["recon"] + cfg.prior_weight * terms["prior"]
    if part != "disentangle":
        labels = class_labels(a)
        _, r_logits, a_hat = model.restore(labels)
        terms["phi"] = (model.decoder(a_hat, z) - x).abs().mean()
        terms["restore"] = F.cross_entropy(r_logits, labels)
        loss = loss + cfg.phi_weight * terms["phi"] + cfg.restore_weight * terms["restore"]
    terms["loss"] = loss
    return terms


def step_part(cfg: DALConfig, step: int) -> str:
    """What training step ``step`` (0-based, global) updates: ``"both"``, or with
    ``cfg.alternate`` ``"disentangle"`` on even steps and ``"restore"`` on odd ones."""
    return ("disentangle", "restore")[int(step) % 2] if cfg.alternate else "both"


def _build(cfg: BaselineConfig, image_size):
    return DAL(image_size, cfg.dal, cfg.width, cfg.levels)


def _optimizers(model: DAL, cfg: BaselineConfig):
    return {"dal": torch.optim.Adam(model.parameters(), lr=cfg.dal.lr)}


def _train_step(model: DAL, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    terms = dal_losses(model, x, roi, step_part(cfg.dal, info.step))
    opts["dal"].zero_grad(set_to_none=True)
    terms["loss"].backward()
    opts["dal"].step()
    return {k: float(v.detach()) for k, v in terms.items()}


def _reconstruct(model: DAL, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model.phi(x)


METHOD = Method(
    name="dal", label="DAL", kind="uad", reference="Yang et al. 2025 (lite, from the description)",
    sub_config=lambda b: b.dal, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct, beyond_paper=True,
)
