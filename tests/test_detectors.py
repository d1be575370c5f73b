"""The supervised detectors of chapter 13 (paper Appendix B.2): boxes, the pieces of the
models, one training step each, the run store, the scores table and the fold protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from u2ad_core import detectors as dt
from u2ad_core import metrics as ev
from u2ad_core.core.config import DetectorConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import SliceData
from u2ad_core.core.labels import SEGMENTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models (2 threads stall a busy machine)

SIZE = (64, 32)
TINY = DetectorConfig(epochs=2, batch_size=4, lr=1e-3, width=4, head_dim=32, anchor_heights=(8, 16),
                      anchor_widths=(6,), rpn_batch=32, roi_batch=16, rpn_pre_nms=100, rpn_post_nms=20,
                      max_detections=10, d_model=16, heads=2, enc_layers=1, dec_layers=1, n_queries=5,
                      checkpoint_every=1)


def tiny_preset(**detectors):
    return get_preset("smoke").override(detectors=TINY).override(**{f"detectors.{k}": v for k, v in detectors.items()})


def slice_arrays(lesion_rows=None):
    """One 64 x 32 slice: a cord at columns 12-17 over rows 4-59, six 9-row segments from row 5."""
    h, w = SIZE
    img = np.full((h, w), 0.2, np.float32)
    cord = np.zeros((h, w), np.uint8)
    cord[4:60, 12:18] = 1
    img[cord > 0] = 0.5
    seg = np.zeros((h, w), np.uint8)
    for k in range(6):
        seg[5 + 9 * k:14 + 9 * k, 8:22] = k + 1
    lesion = np.zeros((h, w), np.uint8)
    if lesion_rows is not None:
        lesion[lesion_rows[0]:lesion_rows[1], 13:17] = 1
        img[lesion > 0] = 0.95
    return img, cord, seg, lesion


def tiny_slices(n_patients=8, seed=0):
    """SliceData: half the patients with a bright lesion in segment C4-5 (rows 23-31), 2 slices each."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for off in (0, 1):
            les = (24, 29) if p % 2 == 0 else None
            img, cord, seg, lesion = slice_arrays(les)
            img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)
            rows.append((img, cord, seg, lesion, f"p{p}", off, int(p % 2 == 0), "C4-5" if p % 2 == 0 else ""))
    a = list(zip(*rows))
    n = len(rows)
    return SliceData(images=np.stack(a[0]), cord=np.stack(a[1]), csf=np.zeros((n, *SIZE), np.uint8),
                     segments=np.stack(a[2]), lesion=np.stack(a[3]), subject=np.array(a[4]),
                     slice_index=np.arange(n), slice_offset=np.array(a[5]), patient_label=np.array(a[6], np.int8),
                     lesion_segments=np.array(a[7]))


def test_box_iou_and_fast_nms_by_hand():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], float)
    iou = dt.box_iou(a, a)
    assert iou[0, 0] == 1 and iou[0, 1] == pytest.approx(25 / 175)
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [21, 20, 31, 30.]])
    keep = dt.nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.95]), 0.5)
    assert keep.tolist() == [3, 0]  # 1 overlaps 0, 2 overlaps 3: both dropped
    assert dt.nms(boxes[:0], torch.zeros(0), 0.5).numel() == 0


def test_segment_and_lesion_boxes_are_the_cord_rectangles():
    img, cord, seg, lesion = slice_arrays((24, 29))
    boxes = dt.segment_cord_boxes(cord, seg)
    assert list(boxes) == list(SEGMENTS)
    assert boxes["C2-3"].tolist() == [12, 5, 18, 14]  # x0, y0, x1 (exclusive), y1 (exclusive)
    b, m = dt.lesion_boxes(cord, seg, lesion)
    assert b.tolist() == [[12, 23, 18, 32]]  # the C4-5 rectangle, not the lesion's own box
    assert m.shape == (1, *SIZE) and m.sum() == lesion.sum()
    b0, m0 = dt.lesion_boxes(cord, seg, np.zeros_like(lesion))
    assert b0.shape == (0, 4) and m0.shape == (0, *SIZE)


def test_roi_align_samples_the_bin_centres():
    feat = torch.arange(16.0).reshape(1, 1, 4, 4)  # value = 4 y + x at pixel centres (stride 1)
    out = dt.roi_align(feat, torch.tensor([[0, 1.0, 1.0, 3.0, 3.0]]), 2, 1)
    # bin centres at pixel coordinates 1.5 and 2.5 -> cell indices 1 and 2
    assert out[0, 0].tolist() == [[5.0, 6.0], [9.0, 10.0]]


def test_hungarian_match_is_the_cheapest_assignment():
    cost = torch.tensor([[4.0, 2.0], [2.0, 0.0], [3.0, 5.0]])
    r, c = dt.hungarian_match(cost)
    assert sorted(zip(r.tolist(), c.tolist())) == [(1, 1), (2, 0)]  # 0 + 3; every other pairing costs 4 or more
    r0, c0 = dt.hungarian_match(torch.zeros(3, 0))
    assert len(r0) == len(c0) == 0


@pytest.mark.parametrize("kind", dt.KINDS)
def test_each_detector_trains_one_step_and_detects(kind):
    model = dt.build_detector(kind, TINY, SIZE, seed=0)
    imgs, tg = [], []
    for rows in ((24, 29), None, (40, 45), None):
        img, cord, seg, lesion = slice_arrays(rows)
        b, m = dt.lesion_boxes(cord, seg, lesion)
        imgs.append(img)
        tg.append({"boxes": torch.from_numpy(b), "masks": torch.from_numpy(m)})
    x = torch.from_numpy(np.stack(imgs))[:, None]
    model.train()
    losses = model(x, tg)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    dets = dt.detect(model, x[:, 0].numpy(), device="cpu")
    assert len(dets) == 4
    for d in dets:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) > 0
        assert (d["scores"] >= 0).all() and (d["scores"] <= 1).all()
        assert (d["boxes"][:, [0, 2]] >= 0).all() and (d["boxes"][:, [0, 2]] <= SIZE[1]).all()
        assert (d["boxes"][:, [1, 3]] >= 0).all() and (d["boxes"][:, [1, 3]] <= SIZE[0]).all()
        assert np.all(np.diff(d["scores"]) <= 0)  # by decreasing score
        if kind == "mask_rcnn":
            assert d["masks"].shape == (len(d["boxes"]), *SIZE)


def test_detection_table_marks_the_segment_of_the_top_box():
    data = tiny_slices(2)
    c4 = dt.segment_cord_boxes(data.cord[0], data.segments[0])["C4-5"]
    dets = [{"boxes": np.array([c4, [0, 0, 5, 5]]), "scores": np.array([0.2, 0.9])},  # top box off the cord
            {"boxes": np.array([c4 + [0, 1, 0, 1]]), "scores": np.array([0.7])},  # IoU 8/10 with C4-5
            {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)},
            {"boxes": np.array([c4]), "scores": np.array([0.4])}]
    t = dt.detection_table(dets, data)
    assert t["patient_score"].tolist() == [0.9, 0.7, 0.0, 0.4]
    assert t[list(SEGMENTS)].iloc[0].isna().all()  # the top box overlaps no segment
    assert t.loc[1, "C4-5"] == 0.7 and t[list(SEGMENTS)].iloc[1].notna().sum() == 1
    pt = ev.patient_table(t).set_index("subject")
    # a patient's slice with the highest score decides: p0's first slice (0.9, top box off the cord)
    assert pt.loc["p0", "score"] == 0.9 and pt.loc["p0", "top_segment"] == "" and not pt.loc["p0", "top_is_lesion"]
    assert pt.loc["p1", "score"] == 0.4 and pt.loc["p1", "top_segment"] == "C4-5"  # healthy p1: no lesion hit
    with pytest.raises(ValueError, match="detections for"):
        dt.detection_table(dets[:3], data)
    # the evaluation takes the table unchanged
    data4 = tiny_slices(4)
    t4 = dt.detection_table([dets[1], dets[2]] * 4, data4)  # lesion patients (even) hit C4-5 at 0.7
    assert ev.patient_table(t4)["top_is_lesion"].tolist() == [True, False, True, False]
    cv = ev.cross_validate(t4, n_folds=2, n_repeats=1)
    assert len(cv.folds) == 2 and cv.settings["n_patients"] == 4


def test_fit_detector_is_seeded_cached_and_resumable(tmp_path):
    data = tiny_slices(4)
    p = tiny_preset()
    a = dt.fit_detector("faster_rcnn", p, data, tmp_path / "a", name="t", device="cpu", seed=0, show_progress=False)
    b = dt.fit_detector("faster_rcnn", p, data, tmp_path / "b", name="t", device="cpu", seed=0, show_progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    done = (a.run_path / "done.json").read_text()
    again = dt.fit_detector("faster_rcnn", p, data, tmp_path / "a", name="t", device="cpu", seed=0, show_progress=False)
    assert again.run_path == a.run_path and (a.run_path / "done.json").read_text() == done  # reused
    assert json.loads(done)["wall_s"] > 0
    other = dt.fit_detector("faster_rcnn", p, data, tmp_path / "a", name="t", device="cpu", seed=1, show_progress=False)
    assert other.run_path != a.run_path

    class Stop(Exception):
        pass

    # an interrupted run resumes from its last epoch and ends with the same weights
    calls = {"n": 0}
    orig = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # in the second of two epochs (8 slices, batch 4)
            raise Stop
        return orig(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(Stop):
            dt.fit_detector("faster_rcnn", p, data, tmp_path / "c", name="t", device="cpu", seed=0, show_progress=False)
    finally:
        torch.optim.AdamW.step = orig
    resumed = dt.fit_detector("faster_rcnn", p, data, tmp_path / "c", name="t", device="cpu", seed=0,
                              show_progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_faster_rcnn_learns_a_bright_segment(tmp_path):
    """A few dozen steps on slices with and without a bright lesion: the top box of a lesion slice
    lands on its segment (IoU > 0.5) and the lesion slices score above the healthy ones."""
    data = tiny_slices(8)
    p = tiny_preset(epochs=25, lr=3e-3)
    model = dt.fit_detector("faster_rcnn", p, data, tmp_path, name="learn", device="cpu", seed=0, show_progress=False)
    dets = dt.detect(model, data.images, device="cpu")
    t = ev.patient_table(dt.detection_table(dets, data))
    les, healthy = t[t["label"] == 1], t[t["label"] == 0]
    assert les["top_is_lesion"].all()
    assert les["score"].min() > healthy["score"].max()


def test_cross_validate_detector_follows_the_three_one_one_split(tmp_path):
    data = tiny_slices(10)
    p = tiny_preset(epochs=1, n_folds=5)
    r = dt.cross_validate_detector("detr", p, data, tmp_path, cohort="tiny", seed=0, device="cpu")
    assert len(r.runs) == 5 and len(set(r.runs)) == 5
    assert len(r.cv.folds) == 5 and r.cv.settings["n_patients"] == 10
    assert sorted(r.table["subject"]) == sorted(data.middle().subject)  # every patient scored once, held out
    # each fold's detector trained on 3 folds: 6 patients x 2 slices
    folds = ev.stratified_folds(data.middle().patient_label, 5, 0)
    for f, run in enumerate(r.runs):
        cfg_json = json.loads((run / "config.json").read_text())
        assert cfg_json["name"] == f"tiny-detr-fold{f}"
    assert all(len(te) == 2 for te in folds)
    assert {"train_auroc", "test_auroc"} <= set(r.fold_auroc.columns)
    row = ev.CVResult.summary(r.cv)
    assert np.isfinite(row.loc["patient_accuracy", "mean"])


def test_cross_validate_detectors_trains_in_two_processes_like_here(tmp_path):
    data = tiny_slices(10)
    p = tiny_preset(epochs=1)
    pooled = dt.cross_validate_detectors(["faster_rcnn"], p, {"tiny": data}, tmp_path / "a", seed=0, device="cpu",
                                         workers=2)
    here = dt.cross_validate_detector("faster_rcnn", p, data, tmp_path / "b", cohort="tiny", seed=0, device="cpu")
    r = pooled[("faster_rcnn", "tiny")]
    assert [pth.name for pth in r.runs] == [pth.name for pth in here.runs]  # the same runs (hashes)
    # one thread in the workers and here (conftest one_torch_thread): the same weights, the same scores
    assert np.array_equal(r.table["patient_score"].to_numpy(), here.table["patient_score"].to_numpy())
