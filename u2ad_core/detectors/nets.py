"""The detector networks, in plain torch and small enough for a CPU (paper Appendix B.2):
a stride-8 conv backbone, Faster R-CNN / Mask R-CNN (region proposals, RoIAlign, box and mask
heads) and DETR (transformer encoder-decoder with object queries, Hungarian matching);
:func:`build_detector` builds one from a seed. :mod:`u2ad_core.detectors.protocol` describes
them and trains them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import DetectorConfig
from u2ad_core.detectors.boxes import box_iou, decode as _decode, encode as _encode, giou as _giou, hungarian_match, nms

__all__ = ["KINDS", "roi_align", "Backbone", "RCNN", "DETR", "build_detector"]

KINDS = ("faster_rcnn", "mask_rcnn", "detr")
_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Faster R-CNN's delta weights of the box head


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

