"""HICO-Det evaluation in the python protocol of HOICLIP (reference §8.1), exact and vectorised.

`evaluate` reproduces the reference evaluator (`HICOEvaluator` of `hico_eval_triplet.py`)
following rules 1-7 of `tests/fixtures/hico_eval/README.md`, quirks included:
  1. +1-pixel IoU with a strict overlap test on the raw coordinates; a box matches at
     IoU >= overlap_iou whatever its class.
  2. Per image, triplets in descending score (stable). A triplet's candidate GT HOIs are those of
     its class whose subject and object boxes it matches; it targets the one with the largest
     min(IoU_sub, IoU_obj) (the first such one on ties). It is a TP iff that GT HOI is still
     free, with no fall-back to another candidate. Hence the first triplet (in processing order)
     targeting a GT HOI is its TP and every later one is an FP, which needs no sequential loop.
  3. Only triplets of classes with at least one GT HOI in the data set are recorded.
  4. 11-point AP per class (`metrics.ap`).
  5.-7. mAP and mean max recall over the classes with GT (no prediction: AP 0, recall 0); the
     rare / non-rare means only over classes with GT *and* a recorded prediction.
All IoUs are computed at once for the (triplet, same-image same-class GT HOI) pairs, so the
9,546-image HICO-Det test set takes about a second instead of minutes.

Differences from the reference that cannot change a result on the fixtures: the IoU arithmetic is
float64 (the reference's numpy-2 float32 scalars round differently by ~1e-7, which matters only
for an IoU within that distance of the threshold or two candidate GT HOIs within it of each
other), and the per-class sort by score is stable (the reference's `np.argsort(-score)` orders
tied scores arbitrarily).

The reference-output fixtures (`hico_eval_fixture/v1`) are run by tests/fixture_readers.py.
"""
import math
from typing import Mapping, NamedTuple, Optional, Sequence, TypedDict

import numpy as np

from hoiclip_jax.eval import nms
from hoiclip_jax.eval.protocols import ap as ap_lib


class EvalImage(TypedDict):
    """One image's input to `evaluate` (plain dicts with these keys work).

    gt_boxes: [n, 4] float xyxy pixels of the original image, humans and objects in one list.
    gt_hois: [h, 3] int (subject box index, object box index, HOI class) or [h, 4] with the HOI
      class in the last column (`HoiRecord.hois`: subject, object, verb, HOI). Indices into
      gt_boxes; an object index of -1 (no object) is an error for HICO.
    pred_boxes: [m, 4] float xyxy pixels; from a model: N subject boxes then N object boxes.
    pred_hois: [P, 4] float rows (subject box id, object box id, HOI class, score); ids index
      pred_boxes.
    """
    gt_boxes: np.ndarray
    gt_hois: np.ndarray
    pred_boxes: np.ndarray
    pred_hois: np.ndarray


class Preds(NamedTuple):
    """All predicted triplets of a list of images; box ids are rows of `boxes`."""
    boxes: np.ndarray     # [sum m, 4] float64
    offsets: np.ndarray   # [I] first row of each image in `boxes`
    image: np.ndarray     # [P] int64 image index
    sub: np.ndarray       # [P] int64 row of the subject box
    obj: np.ndarray       # [P] int64 row of the object box
    cls: np.ndarray       # [P] int64 HOI class
    score: np.ndarray     # [P] float64


class _Gts(NamedTuple):
    """All GT HOIs of a list of images; box ids are rows of `boxes`."""
    boxes: np.ndarray     # [sum n, 4] float64
    image: np.ndarray     # [H] int64
    sub: np.ndarray       # [H] int64
    obj: np.ndarray       # [H] int64
    cls: np.ndarray       # [H] int64


def evaluate(images: Sequence[Mapping[str, np.ndarray]], rare_hois: Sequence[int],
             num_hois: int, overlap_iou: float = 0.5,
             non_rare_hois: Optional[Sequence[int]] = None) -> dict:
    """HICO-Det mAP in the reference's python protocol (module docstring, fixture rules 1-7).

    Args:
      images: one `EvalImage` per test image (predictions already cut to the top k, and
        triplet-NMS'ed when wanted: `predictions_from_topk`, `apply_triplet_nms`).
      rare_hois: HOI class ids counted as rare (zero-shot: the unseen classes).
      num_hois: K, number of HOI classes (ids are 0..K-1).
      overlap_iou: box IoU needed for a match (0.5 in the reference).
      non_rare_hois: HOI class ids counted as non-rare (zero-shot: the seen classes); None:
        every class not in `rare_hois`. A class in neither list (absent from a fractional
        training file, reference §4.2) counts in the Full mean only.

    Returns:
      `mAP`, `mAP_rare`, `mAP_non_rare`, `mean_max_recall` (python floats, fractions; NaN for a
      mean over no class), the class counts `n_classes_with_gt`, `n_rare_in_mean`,
      `n_non_rare_in_mean`, `n_excluded_no_predictions`, and `per_class`: {hoi id: {ap,
      max_recall, n_gt, n_pred, n_tp, bucket ('rare' | 'non_rare' | 'excluded_no_predictions')}}
      for every class with at least one GT HOI (bucket 'neither' for a class in neither list).
    """
    preds = flatten_preds(images, num_hois)
    gts = _flatten_gts(images, num_hois)
    n_gt = np.bincount(gts.cls, minlength=num_hois)
    # Processing order of rule 2: image by image, descending score, stable.
    order = order_by(preds.image, preds.score)
    preds = Preds(preds.boxes, preds.offsets, *(x[order] for x in preds[2:]))
    target = target_gt(preds.image * num_hois + preds.cls, preds.boxes[preds.sub],
                       preds.boxes[preds.obj], gts.image * num_hois + gts.cls,
                       gts.boxes[gts.sub], gts.boxes[gts.obj], overlap_iou)
    tp = first_claims(target)
    recorded = n_gt[preds.cls] > 0
    return _summarise(preds.cls[recorded], preds.score[recorded], tp[recorded], n_gt, rare_hois,
                      non_rare_hois)


def box_iou(gt: np.ndarray, pred: np.ndarray, overlap: str = "strict") -> np.ndarray:
    """Row-wise IoU with +1-pixel areas (rule 1).

    Args:
      gt, pred: [X, 4] float64 xyxy pixels.
      overlap: when two boxes overlap at all. 'strict' (the python reference, rule 1): max y1 <
        min y2 and max x1 < min x2 on the raw coordinates. 'matlab' (ho-rcnn
        `VOCevaldet_bboxpair.m`): intersection width min x2 - max x1 + 1 > 0 and height > 0, so
        boxes sharing one pixel row or column (and 1-pixel boxes, x1 == x2) overlap too. The
        arithmetic is the same in both, and the same as the MATLAB code's.

    Returns:
      [X] float64; 0 for boxes that do not overlap.
    """
    area_gt = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    area_pred = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    x_lo, x_hi = np.maximum(gt[:, 0], pred[:, 0]), np.minimum(gt[:, 2], pred[:, 2])
    y_lo, y_hi = np.maximum(gt[:, 1], pred[:, 1]), np.minimum(gt[:, 3], pred[:, 3])
    width, height = x_hi - x_lo + 1, y_hi - y_lo + 1
    inter = height * width
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_gt + area_pred - inter)
    if overlap == "strict":
        overlaps = (y_lo < y_hi) & (x_lo < x_hi)
    elif overlap == "matlab":
        overlaps = (width > 0) & (height > 0)
    else:
        raise ValueError(f"box_iou: overlap must be 'strict' or 'matlab', got {overlap!r}")
    return np.where(overlaps, iou, 0.0)


def target_gt(pred_key: np.ndarray, pred_sub: np.ndarray, pred_obj: np.ndarray,
              gt_key: np.ndarray, gt_sub: np.ndarray, gt_obj: np.ndarray, overlap_iou: float,
              overlap: str = "strict") -> np.ndarray:
    """The GT pair each triplet targets (rule 2; also ho-rcnn's `VOCevaldet_bboxpair.m`).

    A triplet is compared with every GT pair of the same key (image and HOI class); it targets
    the one with the largest min(IoU_sub, IoU_obj), the first in GT order on ties, when that
    minimum reaches `overlap_iou`. (The MATLAB code takes the argmax over all pairs and then
    tests the threshold; the python reference takes it over the pairs that pass the threshold:
    the same pair either way.) The order of the triplets does not matter here.

    Args:
      pred_key: [P] int64 key of each triplet, e.g. image * K + HOI class.
      pred_sub, pred_obj: [P, 4] float64 xyxy subject and object boxes.
      gt_key: [H] int64 key of each GT pair; gt_sub, gt_obj: [H, 4] float64 xyxy.
      overlap_iou: the threshold (0.5).
      overlap: `box_iou`'s overlap test.

    Returns:
      [P] int64 row of the targeted GT pair, -1 for none.
    """
    by_key = np.argsort(gt_key, kind="stable")  # stable: GT pairs stay in annotation order
    lo = np.searchsorted(gt_key[by_key], pred_key, side="left")
    count = np.searchsorted(gt_key[by_key], pred_key, side="right") - lo
    pair_pred = np.repeat(np.arange(len(pred_key)), count)
    within = np.arange(len(pair_pred)) - np.repeat(np.cumsum(count) - count, count)
    pair_gt = by_key[np.repeat(lo, count) + within]
    iou_sub = box_iou(gt_sub[pair_gt], pred_sub[pair_pred], overlap)
    iou_obj = box_iou(gt_obj[pair_gt], pred_obj[pair_pred], overlap)
    match = (iou_sub >= overlap_iou) & (iou_obj >= overlap_iou)
    pair_pred, pair_gt = pair_pred[match], pair_gt[match]
    min_iou = np.minimum(iou_sub, iou_obj)[match]
    # Largest min-IoU per triplet; lexsort is stable, so ties keep the first GT pair, as the
    # references' "strictly greater replaces" loops do.
    best = np.lexsort((-min_iou, pair_pred))
    first = np.ones(len(best), bool)
    first[1:] = pair_pred[best[1:]] != pair_pred[best[:-1]]
    target = np.full(len(pred_key), -1, np.int64)
    target[pair_pred[best[first]]] = pair_gt[best[first]]
    return target


def first_claims(target: np.ndarray) -> np.ndarray:
    """[P] bool true positives of the greedy matching, `target` given in processing order.

    A triplet is a TP iff its target GT pair is still free (no fall-back to another pair), so
    the first triplet targeting a pair is its TP and every later one an FP.
    """
    tp = np.zeros(len(target), bool)
    has_target = np.flatnonzero(target >= 0)
    _, first = np.unique(target[has_target], return_index=True)
    tp[has_target[first]] = True
    return tp


def _summarise(cls: np.ndarray, score: np.ndarray, tp: np.ndarray, n_gt: np.ndarray,
               rare_hois: Sequence[int], non_rare_hois: Optional[Sequence[int]]) -> dict:
    """Per-class AP and the means of rules 4-7 from the recorded triplets (in recording order)."""
    by_class = order_by(cls, score)  # equal scores keep the recording order
    cls, tp = cls[by_class], tp[by_class]
    starts = np.flatnonzero(np.diff(cls, prepend=-1))
    seg_cls = cls[starts]
    rec, prec = ap_lib.precision_recall(tp, starts, n_gt[seg_cls])
    ap, n_pred, n_tp = (np.zeros(len(n_gt)), np.zeros(len(n_gt), np.int64),
                        np.zeros(len(n_gt), np.int64))
    ap[seg_cls] = ap_lib.voc11_ap(rec, prec, starts)
    n_pred[seg_cls] = np.diff(np.append(starts, len(cls)))
    n_tp[seg_cls] = np.add.reduceat(tp.astype(np.int64), starts) if len(starts) else 0
    rare = set(int(c) for c in rare_hois)
    non_rare = None if non_rare_hois is None else set(int(c) for c in non_rare_hois)
    per_class = {}
    for c in np.flatnonzero(n_gt > 0).tolist():
        bucket = ("excluded_no_predictions" if n_pred[c] == 0
                  else "rare" if c in rare
                  else "non_rare" if non_rare is None or c in non_rare else "neither")
        per_class[c] = {"ap": float(ap[c]), "max_recall": int(n_tp[c]) / int(n_gt[c]),
                        "n_gt": int(n_gt[c]), "n_pred": int(n_pred[c]), "n_tp": int(n_tp[c]),
                        "bucket": bucket}
    in_bucket = {b: [v["ap"] for v in per_class.values() if v["bucket"] == b]
                 for b in ("rare", "non_rare", "excluded_no_predictions")}
    return {
        "mAP": _mean([v["ap"] for v in per_class.values()]),
        "mAP_rare": _mean(in_bucket["rare"]),
        "mAP_non_rare": _mean(in_bucket["non_rare"]),
        "mean_max_recall": _mean([v["max_recall"] for v in per_class.values()]),
        "n_classes_with_gt": len(per_class),
        "n_rare_in_mean": len(in_bucket["rare"]),
        "n_non_rare_in_mean": len(in_bucket["non_rare"]),
        "n_excluded_no_predictions": len(in_bucket["excluded_no_predictions"]),
        "per_class": per_class,
    }


def order_by(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Stable order by (group ascending, score descending), i.e. `np.lexsort((-score, group))`.

    Two stable argsorts, the second a radix sort when the groups fit in int16, are about twice
    as fast as the lexsort on a million triplets.
    """
    by_score = np.argsort(-score, kind="stable")
    group = group[by_score]
    if len(group) and 0 <= group.min() and group.max() < 2**15:
        group = group.astype(np.int16)
    return by_score[np.argsort(group, kind="stable")]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _rows(image: Mapping, index: int, field: str, widths: tuple[int, ...], dtype) -> np.ndarray:
    """image[field] as a 2-D array whose width is one of `widths` (an empty list gives 0 rows)."""
    if field not in image:
        raise ValueError(f"evaluate: image {index} has no field '{field}'")
    value = np.asarray(image[field], dtype)
    if value.size == 0:
        return value.reshape(0, widths[0])
    if value.ndim != 2 or value.shape[1] not in widths:
        raise ValueError(f"evaluate: image {index} field '{field}' must have shape [rows, "
                         f"{' or '.join(map(str, widths))}], got {value.shape}")
    return value


def _check(bad: np.ndarray, image: np.ndarray, field: str, what: str, values: np.ndarray):
    """Raises ValueError naming the first image and value where `bad` holds."""
    if bad.any():
        j = np.flatnonzero(bad)[0]
        raise ValueError(f"evaluate: image {image[j]} field '{field}': {what} (got {values[j]})")


def flatten_preds(images: Sequence[Mapping], num_hois: int | None) -> Preds:
    """Concatenates and validates the predictions of all images (box ids made global).

    `num_hois` None: HOI classes are only checked to be integers >= 0.
    """
    boxes = [_rows(im, i, "pred_boxes", (4,), np.float64) for i, im in enumerate(images)]
    hois = [_rows(im, i, "pred_hois", (4,), np.float64) for i, im in enumerate(images)]
    n_boxes = np.array([len(b) for b in boxes], np.int64)
    offsets = np.cumsum(n_boxes) - n_boxes
    image = np.repeat(np.arange(len(images)), [len(h) for h in hois])
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    hois = np.concatenate(hois) if hois else np.zeros((0, 4))
    _check(~np.isfinite(boxes).all(1), np.repeat(np.arange(len(images)), n_boxes),
           "pred_boxes", "non-finite coordinate", boxes)
    for col, name, high in ((0, "subject id", n_boxes[image]), (1, "object id", n_boxes[image]),
                            (2, "HOI class", np.inf if num_hois is None else num_hois)):
        v = hois[:, col]
        _check((v != np.floor(v)) | (v < 0) | (v >= high), image, "pred_hois",
               f"{name} (column {col}) is not an index of pred_boxes / a class < {num_hois}", v)
    _check(~np.isfinite(hois[:, 3]), image, "pred_hois", "non-finite score", hois[:, 3])
    ids = hois[:, :3].astype(np.int64)
    return Preds(boxes, offsets, image, ids[:, 0] + offsets[image], ids[:, 1] + offsets[image],
                  ids[:, 2], hois[:, 3])


def _flatten_gts(images: Sequence[Mapping], num_hois: int) -> _Gts:
    """Concatenates and validates the GT of all images (box ids made global)."""
    boxes = [_rows(im, i, "gt_boxes", (4,), np.float64) for i, im in enumerate(images)]
    hois = [_rows(im, i, "gt_hois", (3, 4), np.int64)[:, [0, 1, -1]]
            for i, im in enumerate(images)]
    n_boxes = np.array([len(b) for b in boxes], np.int64)
    offsets = np.cumsum(n_boxes) - n_boxes
    image = np.repeat(np.arange(len(images)), [len(h) for h in hois])
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    hois = np.concatenate(hois) if hois else np.zeros((0, 3), np.int64)
    _check(~np.isfinite(boxes).all(1), np.repeat(np.arange(len(images)), n_boxes),
           "gt_boxes", "non-finite coordinate", boxes)
    for col, name, high in ((0, "subject index", n_boxes[image]),
                            (1, "object index", n_boxes[image]), (-1, "HOI class", num_hois)):
        v = hois[:, col]
        _check((v < 0) | (v >= high), image, "gt_hois",
               f"{name} out of range (HICO needs an object box for every HOI)", v)
    return _Gts(boxes, image, hois[:, 0] + offsets[image], hois[:, 1] + offsets[image],
                hois[:, 2])


def apply_triplet_nms(images: Sequence[Mapping], threshold: float, alpha: float,
                      beta: float) -> list[dict]:
    """Copies of `images` whose `pred_hois` keep only the triplet-NMS survivors.

    The kept rows are in the reference's order (`nms.triplet_nms_batch`); all images go
    through one vectorised NMS call.
    """
    keeps = triplet_nms_keep(images, threshold, alpha, beta)
    return [{**im, "pred_hois": np.asarray(im["pred_hois"], np.float64).reshape(-1, 4)[keep]}
            for im, keep in zip(images, keeps)]


def triplet_nms_keep(images: Sequence[Mapping], threshold: float, alpha: float,
                     beta: float) -> list[np.ndarray]:
    """Per image, the [P'] int64 indices into its `pred_hois` kept by the triplet NMS."""
    preds = flatten_preds(images, num_hois=None)
    keep = nms.triplet_nms_batch(preds.image, preds.boxes[preds.sub],
                                         preds.boxes[preds.obj], preds.cls, preds.score,
                                         threshold, alpha, beta)
    counts = np.bincount(preds.image, minlength=len(images))
    first_row = np.cumsum(counts) - counts
    kept_image = preds.image[keep]
    per_image = np.split(keep, np.cumsum(np.bincount(kept_image, minlength=len(images)))[:-1])
    return [k - first_row[i] for i, k in enumerate(per_image)]
