"""EdgeMAE: a masked-autoencoder ViT for single-channel images with a Sobel-edge head.

method.md section 2; structure after facebookresearch/mae ``models_mae.py``. Notation:
``B`` images, ``C`` channels (1 here), ``H x W`` image, ``p`` patch size, grid
``h x w = H/p x W/p`` (non-square grids are fine), ``L = h * w`` patches, ``D`` / ``Dd``
encoder / decoder widths, ``V`` the largest number of visible patches in the batch.

* Encoder: patch embedding (a linear map of each p x p patch) + fixed 2D sin-cos position
  embedding; a class token; torch's own ``nn.TransformerEncoderLayer`` blocks (pre-norm,
  GELU, fused scaled-dot-product attention) on the class token + the *visible* patches only.
* Images in a batch may have different numbers of visible patches (each masks
  ``round(r * n_roi)`` of its own ROI patches). Their visible tokens are gathered into a
  padded ``(B, 1 + V, D)`` tensor with a key-padding mask: padded keys are ignored by every
  query, and the class token is never padded, so no attention row is empty (no NaN) and an
  image's output does not depend on the other images in the batch.
* Decoder: linear to ``Dd``, learnable mask token at the masked positions, fixed sin-cos
  position embedding, transformer blocks on all ``1 + L`` tokens, then two heads (each a
  LayerNorm + linear to ``p*p*C``, sigmoid if ``cfg.sigmoid_heads``): pixels and Sobel edges.
* Loss (authors' code): the predicted image and edge map are pasted onto the input (and its
  Sobel map) outside the ROI *pixels*; per image, MSE over the ROI pixels of the masked
  patches, plus ``cfg.edge_weight`` (paper: lambda = 0.1) times the same MSE for the edge map.
  The batch loss is the mean over the images that have at least one masked ROI pixel (an
  exact, grad-safe 0 when none has). The authors divide by all pixels of the masked patches
  instead of by the ROI pixels among them: the same minimiser, a different scale.

Context window (``cfg.context_radius = r``, off by default): only the patches within ``r``
patches of an ROI patch (:meth:`EdgeMAE.context_patches`, ``K`` of them, ``Kmax`` the most in
the batch) enter the network; the encoder sees the visible ones among them, the decoder all
``1 + Kmax`` of them (padded per image, with a key-padding mask). Outputs of the other patches
are 0 before pasting, and pasting replaces them by the input (they hold no ROI pixel), so the
loss, the reconstructions and the MC maps keep their meaning; only far context is lost.

The edge target is :func:`sobel`: the Sobel gradient magnitude divided by its maximum
possible value for images in [0, 1] (4 * sqrt(2)), so that it lies in [0, 1] like the
sigmoid edge head.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import ModelConfig
from u2ad_core.method.masking import random_roi_mask

__all__ = [
    "EdgeMAE",
    "build_model",
    "count_parameters",
    "sobel",
    "get_2d_sincos_pos_embed",
]

_SOBEL_NORM = 4.0 * math.sqrt(2.0)  # max |grad| of the Sobel operator on images in [0, 1]


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Normalised Sobel gradient magnitude (the edge target).

    x: (B, 1, H, W) float. Returns (B, 1, H, W) in [0, 1] for inputs in [0, 1]
    (``sqrt(gx^2 + gy^2) / (4 sqrt 2)``, replicate padding at the border).
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"sobel: expected (B, 1, H, W), got shape {tuple(x.shape)}")
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    with torch.autocast(x.device.type, enabled=False):  # the target stays in the input's precision
        g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
        return torch.sqrt(g.pow(2).sum(1, keepdim=True) + 1e-12) / _SOBEL_NORM


@contextlib.contextmanager
def _attention_path(x: torch.Tensor):
    """Route CPU inference through ``scaled_dot_product_attention`` (flash kernel, masks included).

    In eval mode ``nn.TransformerEncoderLayer`` takes a "fast path"
    (``torch._transformer_encoder_layer_fwd``); on CPU that path materialises the attention
    matrix whenever a key-padding mask is given and was 1.3-2.3x slower than the regular path
    for the paper-sized model (1025 tokens, 8 channels per head) with or without padding
    (``u2ad bench mc``). On other devices the fast path is left as torch chooses.
    """
    if x.device.type != "cpu" or not torch.backends.mha.get_fastpath_enabled():
        yield
        return
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def _1d_sincos(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) [sin | cos] embedding (MAE util/pos_embed.py)."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid: tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """Fixed 2D sin-cos position embedding for an ``h x w`` grid (non-square allowed).

    Half of the channels encode the column, half the row (as in MAE). Returns float64
    ``(h*w, embed_dim)``, or ``(1 + h*w, embed_dim)`` with a zero row first for the class token.
    """
    if embed_dim % 4:
        raise ValueError(f"get_2d_sincos_pos_embed: embed_dim must be a multiple of 4, got {embed_dim}")
    gh, gw = grid
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    emb = np.concatenate([_1d_sincos(embed_dim // 2, cols), _1d_sincos(embed_dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return emb


def _block(dim: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
        norm_first=True, batch_first=True,
    )


class EdgeMAE(nn.Module):
    """Masked autoencoder with pixel and Sobel-edge heads (see the module docstring).

    Attributes: ``patch_size`` p, ``grid`` (h, w), ``num_patches`` L, ``in_chans`` C.
    """

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else ModelConfig()
        H, W = cfg.image_size
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"EdgeMAE: image_size {cfg.image_size} must be a multiple of patch_size {p}")
        for dim, heads, name in ((cfg.embed_dim, cfg.num_heads, "embed_dim"),
                                 (cfg.decoder_embed_dim, cfg.decoder_num_heads, "decoder_embed_dim")):
            if dim % heads:
                raise ValueError(f"EdgeMAE: {name}={dim} must be divisible by its number of heads {heads}")
            if dim % 4:
                raise ValueError(f"EdgeMAE: {name}={dim} must be a multiple of 4 (2D sin-cos embedding)")
        self.cfg = cfg
        self.image_size = (H, W)
        self.patch_size = p
        self.in_chans = cfg.in_chans
        self.grid = (H // p, W // p)
        self.num_patches = self.grid[0] * self.grid[1]
        patch_dim = p * p * cfg.in_chans

        # ---- encoder specifics
        self.patch_embed = nn.Linear(patch_dim, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer("pos_embed", torch.zeros(1, self.num_patches + 1, cfg.embed_dim), persistent=False)
        self.blocks = nn.ModuleList(_block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim)

        # ---- decoder specifics
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", torch.zeros(1, self.num_patches + 1, cfg.decoder_embed_dim),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            _block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.pixel_norm = nn.LayerNorm(cfg.decoder_embed_dim)
        self.pixel_head = nn.Linear(cfg.decoder_embed_dim, patch_dim)
        self.edge_norm = nn.LayerNorm(cfg.decoder_embed_dim)
        self.edge_head = nn.Linear(cfg.decoder_embed_dim, patch_dim)
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """Fixed sin-cos position embeddings; xavier-uniform linears; N(0, 0.02) tokens (MAE)."""
        self.pos_embed.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(self.cfg.embed_dim, self.grid, cls_token=True)).float()[None])
        self.decoder_pos_embed.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(self.cfg.decoder_embed_dim, self.grid, cls_token=True)).float()[None])
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                if m.in_proj_weight is not None:
                    nn.init.xavier_uniform_(m.in_proj_weight)
                if m.in_proj_bias is not None:
                    nn.init.zeros_(m.in_proj_bias)

    # ------------------------------------------------------------------ shapes
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patches row-major, pixels (row, col, channel)."""
        if x.ndim != 4:
            raise ValueError(f"EdgeMAE.patchify: expected (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"EdgeMAE.patchify: image {H}x{W} is not a multiple of the patch size {p}")
        h, w = H // p, W // p
        x = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, channels: int = 1) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W), on this model's grid."""
        b, L, d = x.shape
        p = self.patch_size
        h, w = self.grid
        if L != h * w or d != p * p * channels:
            raise ValueError(
                f"EdgeMAE.unpatchify: expected (B, {h * w}, {p * p * channels}), got {tuple(x.shape)}")
        x = x.reshape(b, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, channels, h * p, w * p)

    def _roi_pixels(self, roi: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, 1, H, W), any dtype -> bool (B, 1, H, W)."""
        if roi.ndim == 3:
            roi = roi[:, None]
        if roi.ndim != 4 or roi.shape[1] != 1 or tuple(roi.shape[2:]) != self.image_size:
            raise ValueError(
                f"EdgeMAE: roi must be (B, H, W) or (B, 1, H, W) with H x W = {self.image_size}, "
                f"got shape {tuple(roi.shape)}")
        return roi > 0

    def roi_patches(self, roi: torch.Tensor) -> torch.Tensor:
        """ROI pixel mask (B, H, W) or (B, 1, H, W) -> bool (B, L): patch holds any ROI pixel."""
        r = self._roi_pixels(roi)
        b, _, H, W = r.shape
        p = self.patch_size
        return r.reshape(b, H // p, p, W // p, p).any(dim=4).any(dim=2).reshape(b, -1)

    def context_patches(self, roi_patches: torch.Tensor) -> torch.Tensor | None:
        """bool (B, L) ROI patches -> bool (B, L) patches the network sees, or None (all).

        With ``cfg.context_radius = r``: the ROI patches dilated by a (2r+1) x (2r+1) square on
        the patch grid; None when the option is off (every patch is used).
        """
        r = self.cfg.context_radius
        if r is None:
            return None
        if int(r) < 0:
            raise ValueError(f"EdgeMAE: context_radius must be None or >= 0, got {r}")
        b = roi_patches.shape[0]
        g = roi_patches.reshape(b, 1, *self.grid).float()
        k = 2 * int(r) + 1
        return (F.max_pool2d(g, k, stride=1, padding=int(r)) > 0).reshape(b, -1)

    def _mask_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        """bool (B, L) -> bool (B, 1, H, W)."""
        b = mask.shape[0]
        h, w = self.grid
        p = self.patch_size
        m = mask.reshape(b, h, 1, w, 1).expand(b, h, p, w, p)
        return m.reshape(b, 1, h * p, w * p)

    # ------------------------------------------------------------------ network
    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor,
                        keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode the visible patches.

        imgs: (B, C, H, W); mask: bool (B, L), True = masked; keep: bool (B, L) patches inside
        the context window (:meth:`context_patches`) or None (all).
        Returns ``latent`` (B, 1 + V, D) (class token first, visible kept tokens in patch order,
        then padding) and ``key_padding`` bool (B, 1 + V) (True = padding) or None.
        """
        hidden = mask if keep is None else (mask | ~keep)
        b, L = hidden.shape
        visible = ~hidden
        n_vis = visible.sum(1)
        v = int(n_vis.max()) if b else 0
        # visible patches first, in patch order (stable sort of the 0/1 mask)
        ids_keep = torch.argsort(hidden.to(torch.uint8), dim=1, stable=True)[:, :v]
        xp = self.patchify(imgs)  # (B, L, p*p*C)
        patches = torch.gather(xp, 1, ids_keep[..., None].expand(b, v, xp.shape[-1]))
        x = self.patch_embed(patches) + self.pos_embed[0, 1:][ids_keep]
        d = x.shape[-1]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1)
        pad = torch.arange(v, device=x.device)[None] >= n_vis[:, None]
        key_padding = None
        if bool(pad.any()):
            key_padding = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), pad], dim=1)
            x = x.masked_fill(key_padding[..., None], 0.0)
        with _attention_path(x):
            for blk in self.blocks:
                x = blk(x, src_key_padding_mask=key_padding)
        return self.norm(x), key_padding

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor, with_edge: bool = True,
                        keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode to patches.

        latent: (B, 1 + V, D) from :meth:`forward_encoder`; mask: bool (B, L); keep: the same
        context window as given to the encoder, or None (all patches).
        Returns ``(pixels, edges)``, each (B, L, p*p*C) (sigmoid if ``cfg.sigmoid_heads``; 0 at
        patches outside the window); ``edges`` is None when ``with_edge`` is False.
        """
        y = self.decoder_embed(latent)
        b, _, dd = y.shape
        L = mask.shape[1]
        hidden = mask if keep is None else (mask | ~keep)
        tokens = y[:, 1:]
        if tokens.shape[1] > 0:
            rank = (torch.cumsum((~hidden).to(torch.int64), dim=1) - 1).clamp(min=0)  # (B, L)
            placed = torch.gather(tokens, 1, rank[..., None].expand(b, L, dd))
            full = torch.where(hidden[..., None], self.mask_token.to(y.dtype), placed)
        else:
            full = self.mask_token.to(y.dtype).expand(b, L, dd)
        full = full + self.decoder_pos_embed[:, 1:]
        key_padding = None
        if keep is not None:  # only the window's tokens, kept patches first (patch order), padded
            n_keep = keep.sum(1)
            kmax = int(n_keep.max()) if b else 0
            ids = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :kmax]  # (B, Kmax)
            full = torch.gather(full, 1, ids[..., None].expand(b, kmax, dd))
            pad = torch.arange(kmax, device=y.device)[None] >= n_keep[:, None]
            if bool(pad.any()):
                key_padding = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=y.device), pad], dim=1)
        x = torch.cat([y[:, :1] + self.decoder_pos_embed[:, :1], full], dim=1)
        if key_padding is not None:
            x = x.masked_fill(key_padding[..., None], 0.0)
        with _attention_path(x):
            for blk in self.decoder_blocks:
                x = blk(x, src_key_padding_mask=key_padding)
        x = x[:, 1:]
        pix, edge = self._heads(x, with_edge)
        if keep is not None:  # back onto the full grid; patches outside the window stay 0
            back = torch.zeros(b, L, pix.shape[-1], dtype=pix.dtype, device=pix.device)
            sel = ids[..., None].expand(-1, -1, pix.shape[-1])
            valid = (~pad)[..., None] if kmax else None
            pix = back.scatter(1, sel, pix * valid) if kmax else back
            if edge is not None:
                edge = torch.zeros_like(back).scatter(1, sel, edge * valid) if kmax else torch.zeros_like(back)
        return pix, edge

    def _heads(self, x: torch.Tensor, with_edge: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixel and edge heads on decoder tokens (B, T, Dd) -> (B, T, p*p*C) each.

        Computed in float32 even under autocast: the MC statistics are differences between
        reconstructions (EU ~ 1e-5 to 1e-4), and bf16 outputs (8-bit mantissa, steps of ~0.002
        near 0.5) would add a rounding floor of the same order.
        """
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            pix = self.pixel_head(self.pixel_norm(x))
            edge = self.edge_head(self.edge_norm(x)) if with_edge else None
            if self.cfg.sigmoid_heads:
                pix = torch.sigmoid(pix)
                edge = torch.sigmoid(edge) if edge is not None else None
        return pix, edge

    def _check_inputs(self, imgs: torch.Tensor, roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans or tuple(imgs.shape[2:]) != self.image_size:
            raise ValueError(
                f"EdgeMAE: imgs must be (B, {self.in_chans}, {self.image_size[0]}, {self.image_size[1]}), "
                f"got shape {tuple(imgs.shape)}")
        roi_px = self._roi_pixels(roi.to(imgs.device))
        if roi_px.shape[0] != imgs.shape[0]:
            raise ValueError(f"EdgeMAE: roi batch {roi_px.shape[0]} != imgs batch {imgs.shape[0]}")
        return imgs, roi_px

    def _check_mask(self, mask: torch.Tensor, b: int, device) -> torch.Tensor:
        if mask.shape != (b, self.num_patches):
            raise ValueError(f"EdgeMAE: mask must be bool (B, L) = ({b}, {self.num_patches}), "
                             f"got shape {tuple(mask.shape)}")
        return mask.to(device=device, dtype=torch.bool)

    def reconstruct(self, imgs: torch.Tensor, roi: torch.Tensor, mask: torch.Tensor,
                    paste: bool = True, *, with_edge: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reconstruct with a given mask, without loss and without side effects.

        imgs: (B, 1, H, W) in [0, 1]; roi: (B, H, W) or (B, 1, H, W); mask: bool (B, L).
        Returns ``(pred, edge)``, each (B, 1, H, W). With ``paste`` (default) both are pasted
        onto the input / its Sobel map outside the ROI pixels, as in the loss.
        ``with_edge=False`` skips the edge head and returns ``edge = None`` (MC inference).
        """
        imgs, roi_px = self._check_inputs(imgs, roi)
        mask = self._check_mask(mask, imgs.shape[0], imgs.device)
        keep = self.context_patches(self.roi_patches(roi_px))
        latent, _ = self.forward_encoder(imgs, mask, keep)
        pix, edge = self.forward_decoder(latent, mask, with_edge=with_edge, keep=keep)
        pred = self.unpatchify(pix, self.in_chans)
        if paste:
            pred = torch.where(roi_px, pred.to(imgs.dtype), imgs)  # paste in the input's precision
        if edge is not None:
            edge = self.unpatchify(edge, self.in_chans)
            if paste:
                edge = torch.where(roi_px, edge.to(imgs.dtype), sobel(imgs))
        return pred, edge

    def forward(
        self,
        imgs: torch.Tensor,
        roi: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, reconstruct and compute the loss.

        imgs: (B, 1, H, W) float in [0, 1]; roi: (B, 1, H, W) or (B, H, W) (nonzero = ROI);
        mask: bool (B, L) (True = masked) or None to sample random ROI masking with
        ``mask_ratio`` (default 0.75) from ``generator`` (None: torch's default generator).

        Returns ``(loss, pred, mask)``: ``loss`` a scalar (``reduction="mean"``: mean over the
        images with at least one masked ROI pixel, a grad-safe 0 if none) or (B,) per image
        (``"none"``, 0 for images without masked ROI pixels); ``pred`` (B, 1, H, W) the
        reconstruction pasted onto the input outside the ROI; ``mask`` bool (B, L).
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"EdgeMAE.forward: reduction must be 'mean' or 'none', got {reduction!r}")
        imgs, roi_px = self._check_inputs(imgs, roi)
        b = imgs.shape[0]
        if mask is None:
            ratio = 0.75 if mask_ratio is None else float(mask_ratio)
            mask = random_roi_mask(self.roi_patches(roi_px), ratio, generator)
        mask = self._check_mask(mask, b, imgs.device)
        keep = self.context_patches(self.roi_patches(roi_px))
        latent, _ = self.forward_encoder(imgs, mask, keep)
        pix, edge = self.forward_decoder(latent, mask, keep=keep)
        pred = self.unpatchify(pix, self.in_chans)
        edge = self.unpatchify(edge, self.in_chans)
        with torch.no_grad():
            edge_target = sobel(imgs)
        target = imgs
        pred, edge = pred.to(imgs.dtype), edge.to(imgs.dtype)  # loss in the input's precision (AMP)
        pred = torch.where(roi_px, pred, target)
        edge = torch.where(roi_px, edge, edge_target)
        sel = (roi_px & self._mask_pixels(mask)).to(pred.dtype)  # masked ROI pixels
        n_sel = sel.sum(dim=(1, 2, 3))
        denom = n_sel.clamp(min=1.0)
        pix_loss = ((pred - target) ** 2 * sel).sum(dim=(1, 2, 3)) / denom
        edge_loss = ((edge - edge_target) ** 2 * sel).sum(dim=(1, 2, 3)) / denom
        per_image = (pix_loss + self.cfg.edge_weight * edge_loss).float()  # (B,), 0 when n_sel == 0
        if reduction == "none":
            return per_image, pred, mask
        valid = (n_sel > 0).to(per_image.dtype)
        loss = (per_image * valid).sum() / valid.sum().clamp(min=1.0)
        return loss, pred, mask


def build_model(cfg: ModelConfig) -> EdgeMAE:
    """``EdgeMAE(cfg)``."""
    return EdgeMAE(cfg)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
