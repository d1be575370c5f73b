"""Supervised object detectors trained from scratch (paper Table 2, Appendix B.2).

The paper compares U2AD with supervised detectors trained on boxes: for every vertebral
segment with a lesion, the smallest rectangle around the spinal-cord pixels of that segment.
The usual implementations come from torchvision, which must be built for the exact torch
release beside it (not available for this project's pinned torch), so the three
architectures are written here in plain torch, small enough for a CPU, and trained from
random weights:

- ``"faster_rcnn"`` (Ren et al. 2015): a conv backbone (stride 8), a region proposal network
  (anchors of several heights and widths at every feature cell: objectness + box deltas),
  greedy NMS, RoIAlign (bilinear sampling with ``grid_sample``, one sample per bin) and a box
  head (lesion / background + class-specific deltas);
- ``"mask_rcnn"`` (He et al. 2017): the same with a mask head on 14 x 14 RoIs, trained with
  the lesion pixels inside each box;
- ``"detr"`` (Carion et al. 2020): the backbone's features with a 2D sine position encoding
  through a transformer encoder-decoder with learned object queries; each query answers a box
  (sigmoid cx, cy, w, h) and lesion / no-object; training matches queries to boxes one-to-one
  with the Hungarian algorithm (scipy), loss weights of the DETR paper (class 1, no-object
  0.1, L1 5, GIoU 2). Simplified: the position encoding is added once to the encoder input
  (DETR adds it in every attention layer) and there are no auxiliary decoder losses.

Interface (all kinds)::

    model = build_detector(kind, cfg, image_size=(H, W), seed=0)
    losses = model(images, targets)   # train mode: dict of scalar tensors
    dets = model(images)              # eval mode: per image {"boxes" (n, 4), "scores" (n,)[, "masks" (n, H, W)]}

``images`` (B, 1, H, W) in [0, 1]; boxes are ``x0, y0, x1, y1`` in pixels (``x1``, ``y1``
exclusive); ``targets`` a list of ``{"boxes": (m, 4), "masks": (m, H, W)}`` (``m`` may be 0).

The protocol (:func:`cross_validate_detector`): five folds of patients; for test fold ``f``
the next fold is the validation fold (thresholds) and the other three train a detector on all
their slices (:func:`fit_detector`, cached by the run store under ``run_dir/detectors``). A
patient's score is the highest box confidence on its middle slice; the top box is the
predicted place, counted at a segment when its IoU with that segment's cord rectangle exceeds
0.5 (:func:`detection_table` writes the book's scores-table format, so
:mod:`u2ad_core.metrics` scores it like every other method).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import DetectorConfig, to_dict
from u2ad_core.core.presets import Preset
from u2ad_core.data.datasets import data_hash
from u2ad_core.core.labels import SEGMENTS
from u2ad_core.core.runstore import load_state, open_run, train_seconds
from u2ad_core.core.runtime import make_generator, progress, resolve_device

__all__ = [
    "KINDS",
    "box_iou",
    "segment_cord_boxes",
    "lesion_boxes",
    "nms",
    "roi_align",
    "hungarian_match",
    "RCNN",
    "DETR",
    "build_detector",
    "fit_detector",
    "load_detector",
    "detect",
    "detection_table",
    "DetectorCV",
    "cross_validate_detector",
    "cross_validate_detectors",
]

KINDS = ("faster_rcnn", "mask_rcnn", "detr")
FORMAT_VERSION = 1
_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Faster R-CNN's delta weights of the box head


# --------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------
def box_iou(a, b):
    """IoU of boxes ``a`` (n, 4) and ``b`` (m, 4) (``x0, y0, x1, y1``): (n, m); numpy in, numpy
    out, torch in, torch out."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return box_iou(torch.as_tensor(np.asarray(a, np.float64)), torch.as_tensor(np.asarray(b, np.float64))).numpy()
    a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matched boxes a[i], b[i] (n, 4) -> (n,)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    union = (area_a + area_b - inter).clamp(min=1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return inter / union - (hull - union) / hull.clamp(min=1e-9)


def segment_cord_boxes(cord: np.ndarray, segments: np.ndarray) -> dict[str, np.ndarray]:
    """The cord rectangle of every segment present in one slice: ``{name: (4,) float32}``
    (``x0, y0, x1, y1``; ``x1``, ``y1`` one past the last cord pixel). cord, segments: (H, W)."""
    out = {}
    inside = np.asarray(cord) > 0
    seg = np.asarray(segments)
    for k, name in enumerate(SEGMENTS, start=1):
        ys, xs = np.nonzero(inside & (seg == k))
        if len(ys):
            out[name] = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    return out


def lesion_boxes(cord: np.ndarray, segments: np.ndarray, lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Appendix B.2's boxes of one slice: the cord rectangles of the segments that hold lesion
    pixels, ``(m, 4)`` float32, and per box the lesion pixels inside it, ``(m, H, W)`` uint8."""
    les = np.asarray(lesion) > 0
    seg = np.asarray(segments)
    boxes, masks = [], []
    for name, box in segment_cord_boxes(cord, segments).items():
        k = SEGMENTS.index(name) + 1
        if (les & (seg == k)).any():
            x0, y0, x1, y1 = box.astype(int)
            m = np.zeros(les.shape, np.uint8)
            m[y0:y1, x0:x1] = les[y0:y1, x0:x1]
            boxes.append(box)
            masks.append(m)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, *les.shape), np.uint8)
    return np.stack(boxes), np.stack(masks)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Non-maximum suppression, vectorised ("Fast NMS", Bolya et al. 2019): a box is dropped
    when a higher-scoring box overlaps it by more than ``iou``, whether or not that box was
    dropped itself (greedy NMS would keep it then; the difference is rare and removes a Python
    loop over the boxes). Returns the indices of the kept boxes, by decreasing score."""
    order = torch.argsort(scores, descending=True, stable=True)
    if len(order) == 0:
        return order
    ious = box_iou(boxes[order], boxes[order]).triu(1)  # [i, j]: i scores higher than j
    return order[ious.max(0).values <= iou]


def _encode(ref: torch.Tensor, gt: torch.Tensor, w=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Box deltas (dx, dy, dw, dh) that move ``ref`` (n, 4) onto ``gt`` (n, 4)."""
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = w[0] * ((gt[:, 0] + gt[:, 2]) - (ref[:, 0] + ref[:, 2])) / 2 / rw
    dy = w[1] * ((gt[:, 1] + gt[:, 3]) - (ref[:, 1] + ref[:, 3])) / 2 / rh
    return torch.stack([dx, dy, w[2] * torch.log(gw / rw), w[3] * torch.log(gh / rh)], 1)


def _decode(ref: torch.Tensor, d: torch.Tensor, size: tuple[int, int], w=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`_encode`, clipped to the image ``size`` (H, W)."""
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    cx, cy = (ref[:, 0] + ref[:, 2]) / 2 + d[:, 0] / w[0] * rw, (ref[:, 1] + ref[:, 3]) / 2 + d[:, 1] / w[1] * rh
    clamp = math.log(1000.0 / 16)
    bw, bh = rw * torch.exp((d[:, 2] / w[2]).clamp(max=clamp)), rh * torch.exp((d[:, 3] / w[3]).clamp(max=clamp))
    h, wd = size
    return torch.stack([(cx - bw / 2).clamp(0, wd), (cy - bh / 2).clamp(0, h),
                        (cx + bw / 2).clamp(0, wd), (cy + bh / 2).clamp(0, h)], 1)


def roi_align(feat: torch.Tensor, rois: torch.Tensor, out: int, stride: int) -> torch.Tensor:
    """RoIAlign with one bilinear sample at the centre of each bin (``sampling_ratio=1``).

    feat: (B, C, h, w) at ``stride`` pixels per cell; rois: (R, 5) ``[image index, x0, y0, x1,
    y1]`` in pixels. Returns (R, C, out, out)."""
    b, c, h, w = feat.shape
    if len(rois) == 0:
        return feat.new_zeros((0, c, out, out))
    t = (torch.arange(out, dtype=feat.dtype, device=feat.device) + 0.5) / out  # bin centres in [0, 1]
    x = rois[:, 1, None] + t[None] * (rois[:, 3] - rois[:, 1])[:, None]  # (R, out) pixels
    y = rois[:, 2, None] + t[None] * (rois[:, 4] - rois[:, 2])[:, None]
    gx = x / (w * stride) * 2 - 1  # pixel -> grid_sample's [-1, 1] (align_corners=False)
    gy = y / (h * stride) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, out, -1), gy[:, :, None].expand(-1, -1, out)], -1)
    res = feat.new_zeros((len(rois), c, out, out))
    idx = rois[:, 0].long()
    for i in range(b):
        sel = torch.nonzero(idx == i).flatten()
        if len(sel):
            res[sel] = F.grid_sample(feat[i:i + 1].expand(len(sel), -1, -1, -1), grid[sel], mode="bilinear",
                                     padding_mode="zeros", align_corners=False)
    return res


def hungarian_match(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows (queries) and columns (boxes) of the minimum-cost one-to-one matching of ``cost``
    (n_queries, m) (scipy's ``linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    if cost.shape[1] == 0:
        return np.zeros(0, int), np.zeros(0, int)
    r, c = linear_sum_assignment(cost.detach().cpu().numpy())
    return r, c


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(min(8, cout), cout),
                         nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """(B, 1, H, W) -> (B, 4 width, H / 8, W / 8): three stride-2 stages of two 3 x 3 convs."""

    stride = 8

    def __init__(self, width: int):
        super().__init__()
        w = width
        self.net = nn.Sequential(_conv(1, w, 2), _conv(w, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
                                 _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))
        self.out_channels = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class RCNN(nn.Module):
    """Faster R-CNN (``mask=False``) or Mask R-CNN (``mask=True``) at a small size (module doc).

    Random draws (the anchor and RoI samples of training) come from ``self.generator`` when it
    is set (a seeded ``torch.Generator``), else from torch's global generator.
    """

    def __init__(self, cfg: DetectorConfig, image_size: tuple[int, int], mask: bool = False):
        super().__init__()
        self.cfg, self.image_size, self.with_mask = cfg, tuple(image_size), bool(mask)
        self.backbone = Backbone(cfg.width)
        c = self.backbone.out_channels
        s = self.backbone.stride
        shapes = [(float(w), float(h)) for h in cfg.anchor_heights for w in cfg.anchor_widths]
        self.n_anchor = len(shapes)
        fh, fw = math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)
        cy, cx = torch.meshgrid((torch.arange(fh) + 0.5) * s, (torch.arange(fw) + 0.5) * s, indexing="ij")
        wh = torch.tensor(shapes)  # (A, 2)
        ctr = torch.stack([cx, cy], -1).reshape(-1, 1, 2)  # (cells, 1, 2) in feature-map order
        self.register_buffer("anchors", torch.cat([ctr - wh / 2, ctr + wh / 2], -1).reshape(-1, 4), persistent=False)
        self.rpn_conv = _conv(c, c)
        self.rpn_obj = nn.Conv2d(c, self.n_anchor, 1)
        self.rpn_box = nn.Conv2d(c, 4 * self.n_anchor, 1)
        hid = cfg.head_dim
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(c * 49, hid), nn.ReLU(inplace=True),
                                      nn.Linear(hid, hid), nn.ReLU(inplace=True))
        self.cls = nn.Linear(hid, 2)
        self.reg = nn.Linear(hid, 4)
        if self.with_mask:
            self.mask_head = nn.Sequential(_conv(c, c), _conv(c, c), nn.Conv2d(c, 1, 1))
        self.generator: torch.Generator | None = None

    def _sample(self, labels: torch.Tensor, n: int, pos_fraction: float) -> torch.Tensor:
        """Indices of up to ``n`` labelled entries (1 / 0), at most ``pos_fraction`` positive."""
        pos, neg = torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 0).flatten()
        n_pos = min(len(pos), int(n * pos_fraction))
        n_neg = min(len(neg), n - n_pos)
        g = self.generator
        pos = pos[torch.randperm(len(pos), generator=g)[:n_pos].to(pos.device)]
        neg = neg[torch.randperm(len(neg), generator=g)[:n_neg].to(neg.device)]
        return torch.cat([pos, neg])

    def _proposals(self, obj: torch.Tensor, deltas: torch.Tensor) -> list[torch.Tensor]:
        """Per image: decoded, clipped, NMS-ed anchors, the ``rpn_post_nms`` best (k, 4)."""
        out = []
        cfg = self.cfg
        for o, d in zip(obj, deltas):
            k = min(cfg.rpn_pre_nms, len(o))
            top = torch.topk(o, k).indices
            boxes = _decode(self.anchors[top], d[top], self.image_size)
            ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            boxes, sc = boxes[ok], o[top][ok]
            keep = nms(boxes, sc, 0.7)[: cfg.rpn_post_nms]
            out.append(boxes[keep])
        return out

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        feat = self.backbone(images)
        b = feat.shape[0]
        r = self.rpn_conv(feat)
        obj = self.rpn_obj(r).permute(0, 2, 3, 1).reshape(b, -1)  # (B, cells x A), anchor order
        deltas = self.rpn_box(r).permute(0, 2, 3, 1).reshape(b, -1, 4)
        props = self._proposals(obj.detach(), deltas.detach())
        if self.training:
            if targets is None:
                raise ValueError("RCNN: training needs targets")
            return self._losses(feat, obj, deltas, props, targets)
        return self._detect(feat, props)

    def _losses(self, feat, obj, deltas, props, targets):
        cfg = self.cfg
        dev = feat.device
        l_obj, l_rpn, l_cls, l_box, l_mask = [], [], [], [], []
        rois, roi_lab, roi_tgt, mask_rois, mask_tgt = [], [], [], [], []
        for i, t in enumerate(targets):
            gt = t["boxes"].to(dev).float().reshape(-1, 4)
            # RPN: anchors >= 0.7 IoU (and the best anchor of each box) positive, < 0.3 negative
            lab = torch.zeros(len(self.anchors), device=dev)
            matched = torch.zeros(len(self.anchors), dtype=torch.long, device=dev)
            if len(gt):
                iou = box_iou(self.anchors, gt)
                best, matched = iou.max(1)
                lab = torch.full_like(best, -1.0)
                lab[best < 0.3] = 0
                lab[best >= 0.7] = 1
                lab[iou.argmax(0)] = 1
            s = self._sample(lab, cfg.rpn_batch, 0.5)
            l_obj.append(F.binary_cross_entropy_with_logits(obj[i, s], lab[s], reduction="sum") / max(len(s), 1))
            pos = s[lab[s] == 1]
            if len(pos):
                tgt = _encode(self.anchors[pos], gt[matched[pos]])
                l_rpn.append(F.smooth_l1_loss(deltas[i, pos], tgt, beta=1 / 9, reduction="sum") / max(len(s), 1))
            # box head: proposals + the true boxes, IoU >= 0.5 positive
            p = torch.cat([props[i], gt]) if len(gt) else props[i]
            lab_r = torch.zeros(len(p), device=dev)
            m_r = torch.zeros(len(p), dtype=torch.long, device=dev)
            if len(gt):
                best_r, m_r = box_iou(p, gt).max(1)
                lab_r = (best_r >= 0.5).float()
            sr = self._sample(lab_r, cfg.roi_batch, 0.25)
            rois.append(torch.cat([torch.full((len(sr), 1), float(i), device=dev), p[sr]], 1))
            roi_lab.append(lab_r[sr])
            roi_tgt.append(gt[m_r[sr]] if len(gt) else p[sr])
            if self.with_mask and len(gt):
                ps = sr[lab_r[sr] == 1]
                if len(ps):
                    mask_rois.append(torch.cat([torch.full((len(ps), 1), float(i), device=dev), p[ps]], 1))
                    m = t["masks"].to(dev).float()[m_r[ps]]  # (k, H, W): each RoI's own box mask
                    mask_tgt.append(roi_align(m[:, None], torch.cat([torch.arange(len(ps), device=dev)[:, None].float(),
                                                                      p[ps]], 1), 14, 1)[:, 0])
        rois_t, lab_t, tgt_t = torch.cat(rois), torch.cat(roi_lab), torch.cat(roi_tgt)
        h = self.box_head(roi_align(feat, rois_t, 7, self.backbone.stride))
        l_cls.append(F.cross_entropy(self.cls(h), lab_t.long()))
        pos = lab_t == 1
        if pos.any():
            tgt = _encode(rois_t[pos, 1:], tgt_t[pos], _BOX_WEIGHTS)
            l_box.append(F.smooth_l1_loss(self.reg(h)[pos], tgt, beta=1 / 9, reduction="sum") / len(lab_t))
        losses = {"rpn_objectness": torch.stack(l_obj).mean(), "classifier": l_cls[0]}
        zero = feat.sum() * 0
        losses["rpn_box"] = torch.stack(l_rpn).sum() / len(targets) if l_rpn else zero
        losses["box"] = l_box[0] if l_box else zero
        if self.with_mask:
            if mask_rois:
                logits = self.mask_head(roi_align(feat, torch.cat(mask_rois), 14, self.backbone.stride))[:, 0]
                losses["mask"] = F.binary_cross_entropy_with_logits(logits, (torch.cat(mask_tgt) > 0.5).float())
            else:
                losses["mask"] = zero
        return losses

    @torch.no_grad()
    def _detect(self, feat, props):
        cfg = self.cfg
        dev = feat.device
        rois = torch.cat([torch.cat([torch.full((len(p), 1), float(i), device=dev), p], 1)
                          for i, p in enumerate(props)])
        h = self.box_head(roi_align(feat, rois, 7, self.backbone.stride))
        prob = F.softmax(self.cls(h), 1)[:, 1]
        boxes = _decode(rois[:, 1:], self.reg(h), self.image_size, _BOX_WEIGHTS)
        out = []
        for i in range(feat.shape[0]):
            sel = torch.nonzero(rois[:, 0] == i).flatten()
            ok = sel[((boxes[sel, 2] - boxes[sel, 0]) >= 1) & ((boxes[sel, 3] - boxes[sel, 1]) >= 1)]
            keep = ok[nms(boxes[ok], prob[ok], 0.5)][: cfg.max_detections]
            d = {"boxes": boxes[keep], "scores": prob[keep]}
            if self.with_mask:
                d["masks"] = self._paste(feat, i, boxes[keep])
            out.append(d)
        return out

    def _paste(self, feat, i, boxes):
        """Mask probabilities of ``boxes`` of image ``i``, pasted into (n, H, W) at their boxes."""
        hgt, wid = self.image_size
        masks = feat.new_zeros((len(boxes), hgt, wid))
        if not len(boxes):
            return masks
        rois = torch.cat([torch.full((len(boxes), 1), float(i), device=feat.device), boxes], 1)
        prob = torch.sigmoid(self.mask_head(roi_align(feat, rois, 14, self.backbone.stride)))
        for k, bx in enumerate(boxes):
            x0, y0 = int(bx[0].floor()), int(bx[1].floor())
            x1, y1 = max(int(bx[2].ceil()), x0 + 1), max(int(bx[3].ceil()), y0 + 1)
            masks[k, y0:y1, x0:x1] = F.interpolate(prob[k:k + 1], size=(y1 - y0, x1 - x0), mode="bilinear",
                                                   align_corners=False)[0, 0]
        return masks


def _sine_position(h: int, w: int, d: int, device) -> torch.Tensor:
    """DETR's 2D sine position encoding: (h x w, d), half the channels for y, half for x."""
    n = d // 4
    freq = 1.0 / (10000 ** (torch.arange(n, dtype=torch.float32, device=device) / n))
    y = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h * 2 * math.pi
    x = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w * 2 * math.pi
    py = torch.cat([torch.sin(y[:, None] * freq), torch.cos(y[:, None] * freq)], 1)  # (h, 2n)
    px = torch.cat([torch.sin(x[:, None] * freq), torch.cos(x[:, None] * freq)], 1)  # (w, 2n)
    pos = torch.cat([py[:, None].expand(h, w, -1), px[None].expand(h, w, -1)], -1).reshape(h * w, -1)
    return F.pad(pos, (0, d - pos.shape[1]))


class DETR(nn.Module):
    """DETR at a small size (module doc): queries -> (lesion / no-object, cx cy w h)."""

    def __init__(self, cfg: DetectorConfig, image_size: tuple[int, int]):
        super().__init__()
        self.cfg, self.image_size = cfg, tuple(image_size)
        self.backbone = Backbone(cfg.width)
        d = cfg.d_model
        self.proj = nn.Conv2d(self.backbone.out_channels, d, 1)
        enc = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, dropout=0.0, batch_first=True)
        dec = nn.TransformerDecoderLayer(d, cfg.heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, cfg.enc_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, cfg.dec_layers)
        self.queries = nn.Embedding(cfg.n_queries, d)
        self.cls = nn.Linear(d, 2)  # 0 lesion, 1 no-object
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.ReLU(inplace=True),
                                 nn.Linear(d, 4))
        self.generator: torch.Generator | None = None  # unused (no random draws); symmetry with RCNN

    def _heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.proj(self.backbone(images))
        b, d, h, w = f.shape
        src = f.flatten(2).transpose(1, 2) + _sine_position(h, w, d, f.device)[None]
        mem = self.encoder(src)
        q = self.decoder(self.queries.weight[None].expand(b, -1, -1), mem)
        return self.cls(q), torch.sigmoid(self.box(q))  # (B, Q, 2), (B, Q, 4) normalised cx cy w h

    def _to_pixels(self, cxcywh: torch.Tensor) -> torch.Tensor:
        h, w = self.image_size
        cx, cy, bw, bh = cxcywh.unbind(-1)
        return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        logits, boxes = self._heads(images)
        h, w = self.image_size
        scale = boxes.new_tensor([w, h, w, h])
        if not self.training:
            prob = F.softmax(logits, -1)[..., 0]
            out = []
            for p, bx in zip(prob, self._to_pixels(boxes)):
                order = torch.argsort(p, descending=True, stable=True)[: self.cfg.max_detections]
                bx = torch.stack([bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h), bx[:, 2].clamp(0, w),
                                  bx[:, 3].clamp(0, h)], 1)
                out.append({"boxes": bx[order], "scores": p[order]})
            return out
        if targets is None:
            raise ValueError("DETR: training needs targets")
        weight = logits.new_tensor([1.0, self.cfg.eos_coef])
        l_cls, l_l1, l_giou, n_box = [], [], [], 0
        px = self._to_pixels(boxes)
        for i, t in enumerate(targets):
            gt = t["boxes"].to(logits.device).float().reshape(-1, 4)
            cls_t = torch.ones(logits.shape[1], dtype=torch.long, device=logits.device)
            if len(gt):
                g_n = gt / scale
                g_c = torch.stack([(g_n[:, 0] + g_n[:, 2]) / 2, (g_n[:, 1] + g_n[:, 3]) / 2,
                                   g_n[:, 2] - g_n[:, 0], g_n[:, 3] - g_n[:, 1]], 1)
                prob = F.softmax(logits[i], -1)[:, 0]
                pair_giou = _giou(px[i].repeat_interleave(len(gt), 0), gt.repeat(len(px[i]), 1)).reshape(-1, len(gt))
                cost = -prob[:, None] + 5 * torch.cdist(boxes[i], g_c, p=1) - 2 * pair_giou
                r, c = hungarian_match(cost)
                r_t, c_t = torch.as_tensor(r, device=gt.device), torch.as_tensor(c, device=gt.device)
                cls_t[r_t] = 0
                l_l1.append(F.l1_loss(boxes[i, r_t], g_c[c_t], reduction="sum"))
                l_giou.append((1 - _giou(px[i, r_t], gt[c_t])).sum())
                n_box += len(gt)
            l_cls.append(F.cross_entropy(logits[i], cls_t, weight=weight))
        zero = logits.sum() * 0
        n = max(n_box, 1)
        return {"classifier": torch.stack(l_cls).mean(), "l1": 5 * torch.stack(l_l1).sum() / n if l_l1 else zero,
                "giou": 2 * torch.stack(l_giou).sum() / n if l_giou else zero}


def build_detector(kind: str, cfg: DetectorConfig, image_size: tuple[int, int], seed: int = 0) -> nn.Module:
    """A detector of ``kind`` (:data:`KINDS`), initialised from ``seed`` without touching the
    caller's global random state."""
    if kind not in KINDS:
        raise ValueError(f"detector kind must be one of {KINDS}, got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if kind == "detr":
            return DETR(cfg, image_size)
        return RCNN(cfg, image_size, mask=kind == "mask_rcnn")


# --------------------------------------------------------------------------------------
# Training (run store) and inference
# --------------------------------------------------------------------------------------
def _targets(data: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    return [lesion_boxes(data.cord[i], data.segments[i], data.lesion[i]) for i in range(len(data.images))]


def _spec(kind: str, cfg: DetectorConfig, image_size, data: Any, seed: int) -> dict[str, Any]:
    d = to_dict(cfg)
    d.pop("n_folds", None)  # the protocol, not the training
    return {"format": FORMAT_VERSION, "kind": kind, "detector": d, "image_size": list(image_size),
            "data": data_hash(data), "labels": data_hash(data, ("segments", "lesion")), "seed": int(seed)}


def load_detector(path: str | Path, device: str = "cpu") -> nn.Module:
    """A finished detector run (folder or ``model.pt``) in eval mode, with ``run_path`` set."""
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    state = load_state(p)
    spec = state["spec"]
    cfg = DetectorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["detector"].items()})
    model = build_detector(spec["kind"], cfg, tuple(spec["image_size"]), spec["seed"])
    model.load_state_dict(state["model"])
    model.run_path = p.parent
    return model.to(resolve_device(device)).eval()


def fit_detector(kind: str, preset: Preset, data: Any, run_dir: str | Path, *, name: str, device: str = "auto",
                 seed: int = 0, show_progress: bool = True) -> nn.Module:
    """Train a detector of ``kind`` on every slice of ``data`` (a ``SliceData``: images, cord,
    segments, lesion) with ``preset.detectors``; cached by the run store as
    ``run_dir/detectors/{name}-{hash}`` (the hash covers kind, configuration, image size, the
    arrays and the seed): a finished run is loaded, an interrupted one resumes from its last
    epoch. Returns the model in eval mode with ``run_path`` set."""
    cfg = preset.detectors
    images = np.asarray(data.images, np.float32)
    size = tuple(images.shape[1:])
    run = open_run(Path(run_dir) / "detectors", name, _spec(kind, cfg, size, data, seed))
    dev = resolve_device(device)
    if run.done:
        return load_detector(run.path, dev)
    t_start = time.perf_counter()
    model = build_detector(kind, cfg, size, seed).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = make_generator(seed)
    model.generator = g
    start, history, wall_before = 0, [], 0.0
    state = run.start(True, config={"name": name, "kind": kind})
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        start, history, wall_before = int(state["epoch"]), list(state["history"]), float(state["wall_s"])
    boxes = _targets(data)
    x_all = torch.from_numpy(images)[:, None]
    n, bs = len(images), int(cfg.batch_size)
    bar = progress(total=cfg.epochs, initial=start, desc=f"{kind} {name}", unit="epoch", disable=not show_progress)
    model.train()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        sums: dict[str, float] = {}
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            gain = 1 + cfg.intensity_jitter * (2 * torch.rand(len(idx), 1, 1, 1, generator=g) - 1)
            x = (x_all[idx] * gain).clamp(0, 1).to(dev)
            tg = [{"boxes": torch.from_numpy(boxes[i][0]), "masks": torch.from_numpy(boxes[i][1])}
                  for i in idx.tolist()]
            losses = model(x, tg)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"detector {name}: non-finite loss at epoch {epoch}; lower detectors.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        history.append({"epoch": epoch, **{k: v / n for k, v in sums.items()},
                        "seconds": round(time.perf_counter() - t0, 3)})
        run.write_metrics(history)
        if (epoch + 1) % max(1, cfg.checkpoint_every) == 0 and epoch + 1 < cfg.epochs:
            run.save_checkpoint({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "generator": g.get_state(), "history": history,
                                 "wall_s": wall_before + time.perf_counter() - t_start})
        bar.update(1)
    bar.close()
    wall = wall_before + time.perf_counter() - t_start
    run.finish({"format": FORMAT_VERSION, "kind": kind, "spec": run.spec, "model": model.state_dict()},
               {"name": name, "kind": kind, "epochs": cfg.epochs, "device": dev, "wall_s": round(wall, 2)},
               keep_checkpoint=False)
    model.generator = None
    model.run_path = run.path
    return model.eval()


@torch.no_grad()
def detect(model: nn.Module, images: np.ndarray, device: str = "auto",
           batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Detections of every slice of ``images`` (N, H, W): per slice ``boxes`` (n, 4), ``scores``
    (n,) by decreasing score, and ``masks`` (n, H, W) for Mask R-CNN (numpy)."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
    out = []
    for s in range(0, len(x), batch_size):
        for d in model(x[s:s + batch_size].to(dev)):
            out.append({k: v.float().cpu().numpy() for k, v in d.items()})
    return out


def detection_table(dets: list[dict[str, np.ndarray]], data: Any, iou: float = 0.5):
    """The book's scores table (one row per slice) from detections (Appendix B.2): the patient
    score is the highest confidence (0 without a box); the top box marks one segment, the one
    whose cord rectangle it overlaps most, when that IoU exceeds ``iou`` (that segment's column
    gets the top confidence; every other segment column is NaN)."""
    import pandas as pd

    if len(dets) != len(data.images):
        raise ValueError(f"detection_table: {len(dets)} detections for {len(data.images)} slices")
    rows = []
    for i, d in enumerate(dets):
        sc = np.asarray(d["scores"], np.float64)
        row = {"subject": str(data.subject[i]), "patient_label": int(data.patient_label[i]),
               "lesion_segments": str(data.lesion_segments[i]), "patient_score": float(sc.max()) if len(sc) else 0.0}
        row.update({name: np.nan for name in SEGMENTS})
        if len(sc):
            top = np.asarray(d["boxes"], np.float64)[int(np.argmax(sc))]
            seg = segment_cord_boxes(data.cord[i], data.segments[i])
            if seg:
                names = list(seg)
                ious = box_iou(top[None], np.stack([seg[k] for k in names]))[0]
                j = int(np.argmax(ious))
                if ious[j] > iou:
                    row[names[j]] = float(sc.max())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# The paper's protocol (Appendix B.2): 3 / 1 / 1 folds, a detector per fold
# --------------------------------------------------------------------------------------
@dataclass
class DetectorCV:
    """Output of :func:`cross_validate_detector`.

    cv: the fold metrics as a :class:`u2ad_core.metrics.CVResult` (one repeat; thresholds on
    each fold's validation patients); table: the held-out scores table (one row per patient's
    middle slice, each scored by the detector that did not train on it); train_auroc: per fold,
    the patient AUROC of the detector on its own training patients (in-sample; NaN with one
    class), beside ``test_auroc`` on its test fold; runs: the run folders; train_s: the training
    seconds each run recorded; detections: the detections of every middle slice by the
    detector of the fold where that patient is tested (aligned with ``table``).
    """

    cv: Any
    table: Any
    fold_auroc: Any
    runs: list
    train_s: list
    detections: list


def _fold_plan(preset: Preset, data: Any, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
    """Appendix B.2's folds of a cohort: per test fold ``(test rows, validation rows, training
    subjects, training slices)``; rows index the middle slices (``data.middle()``)."""
    from u2ad_core import metrics as ev

    mid = data.middle()
    subjects = np.asarray(mid.subject).astype(str)
    folds = ev.stratified_folds(np.asarray(mid.patient_label).astype(int), preset.detectors.n_folds, seed)
    plan = []
    for f, te in enumerate(folds):
        va = folds[(f + 1) % len(folds)]
        train_subj = np.setdiff1d(subjects, np.concatenate([subjects[te], subjects[va]]))
        plan.append((te, va, train_subj, data.subset(np.isin(np.asarray(data.subject).astype(str), train_subj))))
    return plan


def _fit_job(args: tuple) -> str:
    """One training of :func:`cross_validate_detectors` in a worker process (``threads`` threads)."""
    kind, preset, data, run_dir, name, seed, threads = args
    torch.set_num_threads(int(threads))
    return str(fit_detector(kind, preset, data, run_dir, name=name, device="cpu", seed=seed, show_progress=False).run_path)


def cross_validate_detectors(kinds, preset: Preset, datasets: dict[str, Any], run_dir: str | Path, *, seed: int = 0,
                             device: str = "auto", workers: int | None = None,
                             show_progress: bool = False) -> dict[tuple[str, str], "DetectorCV"]:
    """:func:`cross_validate_detector` for every detector kind and cohort (``datasets``: cohort
    name -> ``SliceData``), ``{(kind, cohort): DetectorCV}``.

    On a CPU the runs that are not cached yet first train ``workers`` at a time in processes of
    one thread each (default: 2 on a machine with at least 2 cores; small models train faster
    per core on one thread, as :func:`u2ad_core.method.train.train_strategies` measured), then every
    fold is scored here from the run store. The weights do not depend on where a run trained,
    except for the last digits of floating-point sums (one thread adds in another order).
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import os

    dev = resolve_device(device)
    cores = os.cpu_count() or 1
    n = int(workers) if workers else (2 if cores >= 2 else 1)
    todo = []
    for cohort, data in datasets.items():
        for kind in kinds:
            for f, (_, _, _, train_data) in enumerate(_fold_plan(preset, data, seed)):
                name = f"{cohort}-{kind}-fold{f}"
                size = tuple(np.asarray(train_data.images).shape[1:])
                if not open_run(Path(run_dir) / "detectors", name, _spec(kind, preset.detectors, size, train_data,
                                                                           seed)).done:
                    todo.append((kind, preset, train_data, str(run_dir), name, seed, max(1, cores // n)))
    if dev == "cpu" and n > 1 and len(todo) > 1:
        bar = progress(total=len(todo), desc=f"detectors ({n} at a time)", unit="run", disable=not show_progress)
        with cf.ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as ex:
            for fut in cf.as_completed([ex.submit(_fit_job, a) for a in todo]):
                fut.result()
                bar.update(1)
        bar.close()
    return {(kind, cohort): cross_validate_detector(kind, preset, data, run_dir, cohort=cohort, seed=seed, device=dev,
                                                    show_progress=show_progress)
            for cohort, data in datasets.items() for kind in kinds}


def cross_validate_detector(kind: str, preset: Any, data: Any, run_dir: str | Path, *, cohort: str,
                            seed: int = 0, device: str = "auto", show_progress: bool = False) -> DetectorCV:
    """Train and test a detector under the paper's Appendix B.2 protocol.

    Patients are split into ``preset.detectors.n_folds`` stratified folds (the split of
    :func:`u2ad_core.metrics.stratified_folds` with ``seed``); for test fold ``f`` the next
    fold (``f + 1``) is the validation fold, where the patient threshold (sensitivity >= 0.9,
    as for every method of the book) and the honest segment threshold are chosen, and the
    other folds train a detector from scratch on all their slices. Every patient is scored on
    its middle slice by the detector of the fold that tests it.
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from u2ad_core import metrics as ev

    cfg = preset.detectors
    mid = data.middle()
    subjects = np.asarray(mid.subject).astype(str)
    y = np.asarray(mid.patient_label).astype(int)
    rows, held, dets_all, runs, secs, aucs = [], [], [None] * len(mid), [], [], []
    for f, (te, va, train_subj, train_data) in enumerate(_fold_plan(preset, data, seed)):
        model = fit_detector(kind, preset, train_data, run_dir, name=f"{cohort}-{kind}-fold{f}", device=device,
                             seed=seed, show_progress=show_progress)
        runs.append(model.run_path)
        secs.append(train_seconds(model.run_path))
        dets = detect(model, mid.images, device=device)
        pt = ev.patient_table(detection_table(dets, mid)).set_index("subject")
        rows.append({"repeat": 0, "fold": f, **ev.fold_metrics(pt.loc[subjects[va]].reset_index(),
                                                                pt.loc[subjects[te]].reset_index(),
                                                                preset.eval.sensitivity, preset.eval.segment_rule)})
        tr_idx = np.flatnonzero(np.isin(subjects, train_subj))

        def auc(idx):
            if len(set(y[idx])) < 2:
                return float("nan")
            return float(roc_auc_score(y[idx], pt.loc[subjects[idx], "score"]))

        aucs.append({"fold": f, "train_auroc": auc(tr_idx), "test_auroc": auc(te)})
        for i in te:
            dets_all[i] = dets[i]
        held.append(te)
    order = np.sort(np.concatenate(held))
    table = detection_table([dets_all[i] for i in order], mid.subset(order))
    folds_df = pd.DataFrame(rows)
    pt = ev.patient_table(table)
    settings = {"n_folds": cfg.n_folds, "n_repeats": 1, "sensitivity": preset.eval.sensitivity, "seed": seed,
                "segment_rule": preset.eval.segment_rule, "n_patients": int(len(pt)),
                "n_positive": int(pt["label"].sum()),
                "n_test_folds_without_positive": int((folds_df["n_test_pos"] == 0).sum()),
                "n_unscored": 0, "n_unscored_positive": 0, "unscored_subjects": [],
                "protocol": "Appendix B.2: train 3 folds, threshold on the next fold, test the fold"}
    return DetectorCV(ev.CVResult(folds=folds_df, patients=pt, settings=settings), table, pd.DataFrame(aucs),
                      runs, secs, dets_all)
