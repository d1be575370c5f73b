"""Box geometry of the detectors: IoU and generalised IoU, the Appendix B.2 target boxes
(the cord rectangle of every segment with lesion pixels), non-maximum suppression, box deltas
and the Hungarian matching of DETR. Boxes are ``x0, y0, x1, y1`` in pixels (``x1``, ``y1``
exclusive)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from u2ad_core.core.labels import SEGMENTS

__all__ = ["box_iou", "segment_cord_boxes", "lesion_boxes", "nms", "hungarian_match", "encode", "decode", "giou"]


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


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


def encode(ref: torch.Tensor, gt: torch.Tensor, w=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Box deltas (dx, dy, dw, dh) that move ``ref`` (n, 4) onto ``gt`` (n, 4)."""
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = w[0] * ((gt[:, 0] + gt[:, 2]) - (ref[:, 0] + ref[:, 2])) / 2 / rw
    dy = w[1] * ((gt[:, 1] + gt[:, 3]) - (ref[:, 1] + ref[:, 3])) / 2 / rh
    return torch.stack([dx, dy, w[2] * torch.log(gw / rw), w[3] * torch.log(gh / rh)], 1)


def decode(ref: torch.Tensor, d: torch.Tensor, size: tuple[int, int], w=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`encode`, clipped to the image ``size`` (H, W)."""
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    cx, cy = (ref[:, 0] + ref[:, 2]) / 2 + d[:, 0] / w[0] * rw, (ref[:, 1] + ref[:, 3]) / 2 + d[:, 1] / w[1] * rh
    clamp = math.log(1000.0 / 16)
    bw, bh = rw * torch.exp((d[:, 2] / w[2]).clamp(max=clamp)), rh * torch.exp((d[:, 3] / w[3]).clamp(max=clamp))
    h, wd = size
    return torch.stack([(cx - bw / 2).clamp(0, wd), (cy - bh / 2).clamp(0, h),
                        (cx + bw / 2).clamp(0, wd), (cy + bh / 2).clamp(0, h)], 1)



def hungarian_match(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows (queries) and columns (boxes) of the minimum-cost one-to-one matching of ``cost``
    (n_queries, m) (scipy's ``linear_sum_assignment``)."""
    if cost.shape[1] == 0:
        return np.zeros(0, int), np.zeros(0, int)
    r, c = linear_sum_assignment(cost.detach().cpu().numpy())
    return r, c

