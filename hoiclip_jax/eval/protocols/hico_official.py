"""HICO-Det evaluation in the official protocol (ho-rcnn `eval_one.m`), without MATLAB.

The paper numbers of HOICLIP / GEN-VLKT (Default and Known-Object) come from the MATLAB code of
ho-rcnn (`evaluation/eval_one.m`, `VOCevaldet_bboxpair.m`) fed by PPDM's converter
(`trans_for_eval_hico.py` + `Generate_detection.m`). This module computes the same numbers in
vectorised numpy, with the matching pieces of the python protocol (`protocols.hico`):

* GT: the official source is `anno_bbox.mat` (`read_anno_bbox`): every `connection` row of every
  non-`invis` HOI of the 9,658 test images, boxes 1-based and pixel-inclusive as stored.
  `gt_from_records` builds the same structure from our `HoiRecord`s (tests, users without the
  .mat); that is not official (other image set, other box source).
* Detections (`prepare_detections`, PPDM's path): scores x 1000, at most 19,999 per HOI class over
  the whole test set (highest scores), boxes rounded half away from zero (MATLAB `round`), then
  shifted +1 before matching (`det_bb + 1`: our 0-based pixels onto the 1-based GT).
* Image set: all images of the GT source; a detection in an image without GT of its class is an
  FP. (The python protocol only sees the images of test_hico.json: 9,546 of the 9,658.)
* Matching, per HOI class: detections in one global descending-score order; each targets the GT
  pair of its image and class with the largest min(IoU_h, IoU_o) (+1-pixel IoU, MATLAB's overlap
  test `iw > 0 && ih > 0`); TP iff that minimum is >= 0.5 and the pair is free, else FP.
* AP: 11-point VOC AP with MATLAB's `0:0.1:1` thresholds, which hold 0.6 and 0.7 exactly where
  numpy's `arange` has 0.6000000000000001 and 0.7000000000000001: a recall of exactly 0.6 or 0.7
  reaches one more threshold here than in the python protocol.
* Means: over all K classes (a class without detections has AP 0 and recall 0; a class without
  GT has AP 0 and recall NaN, as in MATLAB), rare / non-rare over the given lists.
* Settings: 'default' (all images) and 'known_object' (for a class with object o, only the
  detections in images whose `anno.mat` label is 1 for some HOI with object o; GT unchanged).

Usage (dataset root `hico_20160224_det/`; predictions for the 9,658 test images by file name):
    gt = read_anno_bbox(f"{root}/anno_bbox.mat")
    labels = read_anno_image_labels(f"{root}/anno.mat")
    result = evaluate_predictions(gt, predictions, rare_hois, tables.hoi_to_obj,
                                  image_labels=labels)   # {'default': {...}, 'known_object': ...}

Ties. MATLAB's `sort` is stable, so detections of equal score keep the file order: image index,
then the row in the `all_boxes` cell. We write each cell in descending score and keep equal
scores in input order, and evaluate in exactly that order, so this module equals MATLAB run on
the files `hico_export` writes. Where the reference is unspecified we chose: the 19,999 cap keeps,
among equal scores at the boundary, the earliest in (image, row) order (PPDM's reversed
`np.argsort` order is arbitrary there). Multiplying by 1000 is monotone, so it changes a ranking
only by making two scores equal that differed in the last bits; for float32 scores (our model's)
x 1000 is exact in float64 and creates no tie. We apply it anyway, as PPDM does.
"""
import dataclasses
import math
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np

from hoiclip_jax.eval.protocols import ap as ap_lib
from hoiclip_jax.eval.protocols import hico


# MATLAB's colon operator fills the first half of 0:0.1:1 as k * 0.1 and the second half as
# 1 - k * 0.1 (MathWorks' `colonop`), so 0.3 is 0.30000000000000004 but 0.6 and 0.7 are exact.
MATLAB_THRESHOLDS = np.array([0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5,
                              1 - 4 * 0.1, 1 - 3 * 0.1, 1 - 2 * 0.1, 1 - 0.1, 1.0])
MAX_PER_CLASS = 19999
SCORE_SCALE = 1000.0
SETTINGS = ("default", "known_object")


@dataclasses.dataclass(frozen=True)
class OfficialGt:
    """The GT pairs of one split, one row per `connection` row of a non-invis HOI.

    Attributes:
      file_names: [I] image file names in the official order (detections index these).
      image: [G] int64 index into file_names.
      cls: [G] int64 HOI class, 0-based (official id - 1).
      sub, obj: [G, 4] float64 xyxy human / object boxes, 1-based pixel-inclusive (the frame of
        the +1-shifted detections).
    """
    file_names: tuple[str, ...]
    image: np.ndarray
    cls: np.ndarray
    sub: np.ndarray
    obj: np.ndarray


class ImageLabels(NamedTuple):
    """Image-level HOI labels of `anno.mat`: file_names [N], labels [K, N] float64 (1 positive,
    0 negative, -1 ambiguous, NaN unknown)."""
    file_names: tuple[str, ...]
    labels: np.ndarray


class Detections(NamedTuple):
    """Scored HOI triplets of a test set, boxes xyxy in 0-based pixels (before the +1 shift).

    image [D] int64 index into the GT's file_names; cls [D] int64 HOI class; sub, obj [D, 4]
    float64; score [D] float64.
    """
    image: np.ndarray
    cls: np.ndarray
    sub: np.ndarray
    obj: np.ndarray
    score: np.ndarray


def subset(dets: Detections, index: np.ndarray) -> Detections:
    """The detections selected by `index` (int indices or a bool mask), in that order."""
    return Detections(*(x[index] for x in dets))


# ---------------------------------------------------------------------------------------------
# GT and detections from our own data structures.

def gt_from_records(records: Sequence, box_shift: float = 1.0) -> OfficialGt:
    """`OfficialGt` from `HoiRecord`s (not official: see the module docstring).

    Args:
      records: `data_pipeline.hico_reader.HoiRecord`s, one per image (images without HOIs too:
        their detections are FPs).
      box_shift: added to the record boxes to put them in the frame of the +1-shifted
        detections. 1 treats them as 0-based like our predictions, which makes the matching the
        python protocol's; use 0 for boxes that are already `anno_bbox.mat`'s 1-based values.
    """
    rows = [(i, h) for i, r in enumerate(records) for h in np.asarray(r.hois).reshape(-1, 4)]
    names = tuple(r.file_name for r in records)
    if len(set(names)) != len(names):
        raise ValueError("gt_from_records: duplicate file_name in the records")
    image = np.array([i for i, _ in rows], np.int64)
    hois = np.array([h for _, h in rows], np.int64).reshape(-1, 4)
    if (hois[:, 1] < 0).any():
        i = image[np.flatnonzero(hois[:, 1] < 0)[0]]
        raise ValueError(f"gt_from_records: record {names[i]} has an HOI without an object box")
    boxes = [np.asarray(r.boxes, np.float64).reshape(-1, 4) + box_shift for r in records]
    sub = np.array([boxes[i][h[0]] for i, h in rows]).reshape(-1, 4)
    obj = np.array([boxes[i][h[1]] for i, h in rows]).reshape(-1, 4)
    return OfficialGt(names, image, hois[:, 3].copy(), sub, obj)


def instance_counts(gt: OfficialGt, num_hois: int) -> np.ndarray:
    """[K] int64 GT pairs per class; on `read_anno_bbox(path, 'train')`, `< 10` is eval_one's
    rare split."""
    return np.bincount(gt.cls, minlength=num_hois)


def detections_from_predictions(predictions: Mapping[str, Mapping], file_names: Sequence[str],
                                num_hois: int) -> Detections:
    """Flattens per-image predictions (`pred_boxes` [m, 4], `pred_hois` [P, 4] rows (subject
    id, object id, HOI class, score), as `protocols.hico`'s `EvalImage`) keyed by file name.

    Images of `file_names` without an entry have no detections; a file name that is not in
    `file_names` raises ValueError. Output order: image (file order), then `pred_hois` row.
    """
    index = {name: i for i, name in enumerate(file_names)}
    unknown = [name for name in predictions if name not in index]
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} images that are not in the GT's image "
                         f"list, e.g. {unknown[:3]}")
    empty = {"pred_boxes": np.zeros((0, 4)), "pred_hois": np.zeros((0, 4))}
    images = [predictions.get(name, empty) for name in file_names]
    try:
        preds = hico.flatten_preds(images, num_hois)
    except ValueError as e:
        raise ValueError(f"predictions (image = index in the GT's file list): {e}") from None
    return Detections(preds.image, preds.cls, preds.boxes[preds.sub], preds.boxes[preds.obj],
                      preds.score)


def matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB `round`: halves away from zero (numpy's `round` goes to even), exact."""
    whole = np.trunc(x)
    return whole + np.sign(x) * (np.abs(x - whole) >= 0.5)


def prepare_detections(dets: Detections, max_per_class: int = MAX_PER_CLASS,
                       round_boxes: bool = True, score_scale: float = SCORE_SCALE) -> Detections:
    """PPDM's conversion: scores x score_scale, the `max_per_class` best per class, rounding.

    Equal scores are ranked in input order (`detections_from_predictions`: image, then row).

    Returns:
      The kept detections in file order: class, image, then descending score (the rows of one
      `all_boxes` cell), boxes still 0-based.
    """
    score = dets.score * score_scale
    order = hico.order_by(dets.cls, score)
    cls = dets.cls[order]
    starts = np.flatnonzero(np.diff(cls, prepend=-1))
    rank = np.arange(len(cls)) - np.repeat(starts, np.diff(np.append(starts, len(cls))))
    keep = order[rank < max_per_class]
    keep = keep[np.lexsort((dets.image[keep], dets.cls[keep]))]  # stable: scores stay sorted
    out = subset(dets._replace(score=score), keep)
    if round_boxes:
        out = out._replace(sub=matlab_round(out.sub), obj=matlab_round(out.obj))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation.

def known_object_images(gt: OfficialGt, hoi_to_obj: np.ndarray,
                        image_labels: Optional[ImageLabels]) -> np.ndarray:
    """[O, I] bool: image i is kept for the classes of object o in the Known-Object setting.

    With `image_labels` (`anno.mat`, official): some HOI of object o is labelled 1 in image i.
    Without (not official): some GT pair of a class of object o is in image i.
    """
    num_hois, num_images = len(hoi_to_obj), len(gt.file_names)
    if image_labels is None:
        positive = np.zeros((num_hois, num_images), bool)
        positive[gt.cls, gt.image] = True
    else:
        if image_labels.labels.shape[0] != num_hois:
            raise ValueError(f"image labels have {image_labels.labels.shape[0]} HOI rows, the "
                             f"class table {num_hois}")
        column = {name: k for k, name in enumerate(image_labels.file_names)}
        missing = [name for name in gt.file_names if name not in column]
        if missing:
            raise ValueError(f"image labels lack {len(missing)} GT images, e.g. {missing[:3]}")
        positive = image_labels.labels[:, [column[n] for n in gt.file_names]] == 1
    one_hot = np.eye(int(hoi_to_obj.max()) + 1, dtype=np.float32)[hoi_to_obj].T  # [O, K]
    present = (one_hot @ positive.astype(np.float32)) > 0
    # eval_one.m asserts that no GT pair lies in an image the setting drops.
    lost = ~present[hoi_to_obj[gt.cls], gt.image]
    if lost.any():
        g = np.flatnonzero(lost)[0]
        raise ValueError(f"Known-Object: GT pair of class {gt.cls[g]} in image "
                         f"{gt.file_names[gt.image[g]]} whose image labels have no positive HOI "
                         f"of its object ({lost.sum()} such pairs)")
    return present


def evaluate_official(gt: OfficialGt, dets: Detections, rare_hois: Sequence[int],
                      hoi_to_obj: np.ndarray, *, image_labels: Optional[ImageLabels] = None,
                      settings: Sequence[str] = SETTINGS,
                      non_rare_hois: Optional[Sequence[int]] = None,
                      overlap_iou: float = 0.5) -> dict:
    """eval_one.m on detections already in the official form (`prepare_detections` or
    `hico_export.read_detection_files`): 0-based boxes, shifted +1 here.

    Args:
      gt: `read_anno_bbox(...)` (official) or `gt_from_records(...)`.
      dets: detections; their order within one (class, image) is the cell's row order.
      rare_hois: rare HOI classes (0-based; eval_one: < 10 training pairs, 138 of 600).
      hoi_to_obj: [K] object index of each class (`ClassTables.hoi_to_obj`); K = num classes.
      image_labels: `read_anno_image_labels(anno.mat)` for Known-Object (None: from the GT).
      settings: subset of ('default', 'known_object').
      non_rare_hois: None: every class not in `rare_hois` (eval_one's split).
      overlap_iou: the min-IoU threshold (0.5).

    Returns:
      {setting: {mAP, mAP_rare, mAP_non_rare, mean_recall, mean_recall_rare,
      mean_recall_non_rare, n_classes, n_rare, n_non_rare, n_classes_without_gt, n_images,
      n_detections, per_class: {class: {ap, recall, n_gt, n_det, n_tp}}}}, fractions.
    """
    hoi_to_obj = np.asarray(hoi_to_obj, np.int64)
    num_hois = len(hoi_to_obj)
    _check_indices("GT", gt, len(gt.file_names), num_hois)
    _check_indices("detections", dets, len(gt.file_names), num_hois)
    dets = subset(dets, np.lexsort((dets.image, dets.cls)))  # file order, rows kept in order
    groups = _class_groups(num_hois, rare_hois, non_rare_hois)
    results = {}
    for setting in settings:
        if setting == "default":
            kept = dets
        elif setting == "known_object":
            present = known_object_images(gt, hoi_to_obj, image_labels)
            kept = subset(dets, present[hoi_to_obj[dets.cls], dets.image])
        else:
            raise ValueError(f"evaluate_official: unknown setting {setting!r} (use {SETTINGS})")
        results[setting] = _evaluate_setting(gt, kept, num_hois, overlap_iou, groups)
    return results


def evaluate_predictions(gt: OfficialGt, predictions: Mapping[str, Mapping],
                         rare_hois: Sequence[int], hoi_to_obj: np.ndarray, *,
                         image_labels: Optional[ImageLabels] = None,
                         settings: Sequence[str] = SETTINGS,
                         non_rare_hois: Optional[Sequence[int]] = None,
                         max_per_class: int = MAX_PER_CLASS, round_boxes: bool = True,
                         score_scale: float = SCORE_SCALE, overlap_iou: float = 0.5) -> dict:
    """The whole official path from our per-image predictions (keyed by file name; see
    `detections_from_predictions`): PPDM's conversion, then `evaluate_official`."""
    num_hois = len(hoi_to_obj)
    dets = detections_from_predictions(predictions, gt.file_names, num_hois)
    dets = prepare_detections(dets, max_per_class, round_boxes, score_scale)
    return evaluate_official(gt, dets, rare_hois, hoi_to_obj, image_labels=image_labels,
                             settings=settings, non_rare_hois=non_rare_hois,
                             overlap_iou=overlap_iou)


def _check_indices(what: str, tuple_, num_images: int, num_hois: int) -> None:
    """Raises ValueError unless GT / detections index the images and classes."""
    for name, high in (("image", num_images), ("cls", num_hois)):
        values = getattr(tuple_, name)
        if len(values) and (values.min() < 0 or values.max() >= high):
            raise ValueError(f"{what}: field '{name}' must be in [0, {high}), got values in "
                             f"[{values.min()}, {values.max()}]")
    for name in ("sub", "obj") + (("score",) if what == "detections" else ()):
        if not np.isfinite(getattr(tuple_, name)).all():
            raise ValueError(f"{what}: field '{name}' has non-finite values")


def _class_groups(num_hois: int, rare_hois, non_rare_hois) -> tuple[np.ndarray, np.ndarray]:
    rare = np.zeros(num_hois, bool)
    rare[np.asarray(list(rare_hois), np.int64)] = True
    if non_rare_hois is None:
        return rare, ~rare
    non_rare = np.zeros(num_hois, bool)
    non_rare[np.asarray(list(non_rare_hois), np.int64)] = True
    return rare, non_rare


def _evaluate_setting(gt: OfficialGt, dets: Detections, num_hois: int, overlap_iou: float,
                      groups: tuple[np.ndarray, np.ndarray]) -> dict:
    """AP and recall of every class for one setting (VOCevaldet_bboxpair.m per class)."""
    dets = subset(dets, hico.order_by(dets.cls, dets.score))  # per class, stable by score
    target = hico.target_gt(dets.image * num_hois + dets.cls, dets.sub + 1, dets.obj + 1,
                            gt.image * num_hois + gt.cls, gt.sub, gt.obj, overlap_iou,
                            overlap="matlab")
    tp = hico.first_claims(target)
    n_gt = np.bincount(gt.cls, minlength=num_hois)
    starts = np.flatnonzero(np.diff(dets.cls, prepend=-1))
    seg_cls = dets.cls[starts]
    ap, recall = np.zeros(num_hois), np.zeros(num_hois)
    n_det, n_tp = np.zeros(num_hois, np.int64), np.zeros(num_hois, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):  # no GT: recall 0 / 0 = NaN (MATLAB)
        rec, prec = ap_lib.precision_recall(tp, starts, n_gt[seg_cls])
    ap[seg_cls] = ap_lib.voc11_ap(rec, prec, starts, MATLAB_THRESHOLDS)
    ends = np.append(starts[1:], len(tp))[:len(starts)]
    recall[seg_cls] = rec[ends - 1]
    n_det[seg_cls] = ends - starts
    if len(tp):
        n_tp[seg_cls] = np.add.reduceat(tp.astype(np.int64), starts)
    return _summary(ap, recall, n_gt, n_det, n_tp, groups, len(gt.file_names))


def _summary(ap, recall, n_gt, n_det, n_tp, groups, num_images: int) -> dict:
    rare, non_rare = groups
    return {
        "mAP": _mean(ap), "mAP_rare": _mean(ap[rare]), "mAP_non_rare": _mean(ap[non_rare]),
        "mean_recall": _mean(recall), "mean_recall_rare": _mean(recall[rare]),
        "mean_recall_non_rare": _mean(recall[non_rare]),
        "n_classes": len(ap), "n_rare": int(rare.sum()), "n_non_rare": int(non_rare.sum()),
        "n_classes_without_gt": int((n_gt == 0).sum()), "n_images": num_images,
        "n_detections": int(n_det.sum()),
        "per_class": {c: {"ap": float(ap[c]), "recall": float(recall[c]), "n_gt": int(n_gt[c]),
                          "n_det": int(n_det[c]), "n_tp": int(n_tp[c])}
                      for c in range(len(ap))},
    }


def _mean(values: np.ndarray) -> float:
    """MATLAB `mean`: NaN if any value is NaN; NaN for no value."""
    return float(np.mean(values)) if len(values) else math.nan
