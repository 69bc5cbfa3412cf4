"""V-COCO evaluation in the python protocol of HOICLIP (reference §8.2), exact and vectorised.

`evaluate` reproduces the reference's own evaluator (`VCOCOEvaluator` of `vcoco_eval.py`, the
one its training loop reports) following the rules of `tests/fixtures/vcoco_eval/README.md`
(a copy of `shared/fixtures/vcoco_eval/README.md`), quirks included:
  1. +1-pixel IoU with the strict overlap test of the HICO evaluator (`hico.box_iou`), and
     category-aware: 0 unless the predicted box label equals the GT box label.
  2. Per image, triplets (subject, object, verb, score) in descending score (stable). The
     candidate GT HOIs are those of the triplet's verb; a GT HOI without object (object -1) needs
     IoU_sub >= overlap_iou and scores IoU_sub, any other one needs both IoUs >= overlap_iou and
     scores min(IoU_sub, IoU_obj). The triplet targets the best candidate (the first on ties);
     it is a TP iff that GT HOI is still free, with no fall-back to another candidate. So the
     first triplet (in processing order) that targets a GT HOI is its TP and every later one an
     FP, which needs no sequential loop.
  3. Every triplet is recorded; verbs with at least one GT HOI get an AP.
  4. 11-point AP per verb (`metrics.ap`).
  5. mAP_all: mean over the verbs with GT.
  6. mAP_thesis: mean over the 24 thesis verbs, a thesis verb without GT counting as AP 0.
  7. No NMS. The top-k before it is `scoring.vcoco_topk` (rule 8).
This is only a proxy of the official V-COCO role AP; that one is in `protocols.vcoco_official`,
whose public functions are re-exported here.

The IoU arithmetic is float64 where the reference used float32 scalars; the fixtures keep every
IoU at least 1e-4 away from the threshold, so both agree on every match there.

The reference-output fixtures (`vcoco_eval_fixture/v1`) are run by tests/fixture_readers.py.
"""
import math
from typing import Mapping, NamedTuple, Optional, Sequence, TypedDict

import numpy as np

from hoiclip_jax.eval.protocols import ap as ap_lib
from hoiclip_jax.eval.protocols import hico
from hoiclip_jax.eval.protocols.vcoco_files import read_vcoco_gt
from hoiclip_jax.eval.protocols.vcoco_official import (
    VcocoGroundTruth, coco_image_id, detections_from_topk, role_ap, verb_action_role)

__all__ = [  # the proxy here, the official role AP re-exported
    "EvalImage", "evaluate", "predictions_from_topk",
    "VcocoGroundTruth", "read_vcoco_gt", "role_ap", "detections_from_topk", "verb_action_role",
    "coco_image_id"]

class EvalImage(TypedDict):
    """One image's input to `evaluate` (plain dicts with these keys work).

    gt_boxes: [n, 4] float xyxy pixels of the original image, humans and objects in one list.
    gt_box_labels: [n] int object index of each GT box (person = 0).
    gt_hois: [h, 3] int (subject box index, object box index or -1 for no object, verb), or
      [h, 4] with a 4th column that is ignored (`HoiRecord.hois`: ..., verb, HOI).
    pred_boxes: [m, 4] float xyxy pixels; from a model: N subject boxes then N object boxes.
    pred_box_labels: [m] int predicted label of each box (subjects 0; objects the argmax label,
      V-COCO's no-object class 80 included).
    pred_hois: [P, 4] float rows (subject box id, object box id, verb, score).
    """
    gt_boxes: np.ndarray
    gt_box_labels: np.ndarray
    gt_hois: np.ndarray
    pred_boxes: np.ndarray
    pred_box_labels: np.ndarray
    pred_hois: np.ndarray


class _Gts(NamedTuple):
    """All GT HOIs of a list of images; box ids are rows of `boxes`."""
    boxes: np.ndarray     # [sum n, 4] float64
    labels: np.ndarray    # [sum n] int64
    image: np.ndarray     # [H] int64
    sub: np.ndarray       # [H] int64
    obj: np.ndarray       # [H] int64, -1 for no object
    verb: np.ndarray      # [H] int64


def evaluate(images: Sequence[Mapping[str, np.ndarray]], num_verbs: int,
             thesis_verbs: Sequence[int], overlap_iou: float = 0.5,
             verb_names: Optional[Sequence[str]] = None) -> dict:
    """V-COCO mAP in the reference's python protocol (module docstring, fixture rules 1-7).

    Args:
      images: one `EvalImage` per test image (`predictions_from_topk` makes the prediction
        fields from `scoring.vcoco_topk`).
      num_verbs: V, number of verb(-role) classes (29); ids are 0..V-1.
      thesis_verbs: the verbs averaged by mAP_thesis (the table's `thesis_verb_ids`, 24).
      overlap_iou: box IoU needed for a match (0.5 in the reference).
      verb_names: optional [V] names, copied into `per_verb`.

    Returns:
      `mAP_all`, `mAP_thesis` (python floats, fractions; NaN for a mean over no verb),
      `n_verbs_with_gt`, `thesis_verbs_without_gt` (sorted list) and `per_verb`: {verb: {ap,
      n_gt, n_pred, n_tp, max_recall[, name]}} for every verb with at least one GT HOI.
    """
    preds = hico.flatten_preds(images, num_verbs)  # pred_hois column 2 is the verb here
    pred_labels = _labels(images, "pred_box_labels", np.diff(np.append(preds.offsets,
                                                                       len(preds.boxes))))
    gts = _flatten_gts(images, num_verbs)
    n_gt = np.bincount(gts.verb, minlength=num_verbs)
    # Processing order of rule 2: image by image, descending score, stable.
    order = hico.order_by(preds.image, preds.score)
    preds = preds._replace(image=preds.image[order], sub=preds.sub[order],
                           obj=preds.obj[order], cls=preds.cls[order], score=preds.score[order])
    tp = hico.first_claims(_target_gt(preds, pred_labels, gts, num_verbs, overlap_iou))
    with_gt = n_gt[preds.cls] > 0  # recorded, but only these verbs get an AP
    return _summarise(preds.cls[with_gt], preds.score[with_gt], tp[with_gt], n_gt,
                      thesis_verbs, verb_names)


def _same_key_pairs(gt_key: np.ndarray, pred_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (prediction, GT) index pairs with equal keys; GT HOIs of a key in annotation order."""
    by_key = np.argsort(gt_key, kind="stable")
    lo = np.searchsorted(gt_key[by_key], pred_key, side="left")
    count = np.searchsorted(gt_key[by_key], pred_key, side="right") - lo
    pair_pred = np.repeat(np.arange(len(pred_key)), count)
    within = np.arange(len(pair_pred)) - np.repeat(np.cumsum(count) - count, count)
    return pair_pred, by_key[np.repeat(lo, count) + within]


def _target_gt(preds: hico.Preds, pred_labels: np.ndarray, gts: _Gts, num_verbs: int,
               overlap_iou: float) -> np.ndarray:
    """[P] int64: the GT HOI (row of `gts`) each triplet targets under rule 2, or -1."""
    pair_pred, pair_gt = _same_key_pairs(gts.image * num_verbs + gts.verb,
                                         preds.image * num_verbs + preds.cls)

    def class_iou(gt_rows, pred_rows):
        iou = hico.box_iou(gts.boxes[gt_rows], preds.boxes[pred_rows])
        return np.where(gts.labels[gt_rows] == pred_labels[pred_rows], iou, 0.0)

    iou_sub = class_iou(gts.sub[pair_gt], preds.sub[pair_pred])
    has_obj = gts.obj[pair_gt] >= 0
    # For GT HOIs without object the object IoU is computed on the subject box and never used.
    iou_obj = class_iou(np.where(has_obj, gts.obj[pair_gt], gts.sub[pair_gt]),
                        preds.obj[pair_pred])
    match = (iou_sub >= overlap_iou) & (~has_obj | (iou_obj >= overlap_iou))
    overlap = np.where(has_obj, np.minimum(iou_sub, iou_obj), iou_sub)[match]
    pair_pred, pair_gt = pair_pred[match], pair_gt[match]
    # Largest overlap per triplet; lexsort is stable, so ties keep the first GT HOI.
    best = np.lexsort((-overlap, pair_pred))
    first = np.ones(len(best), bool)
    first[1:] = pair_pred[best[1:]] != pair_pred[best[:-1]]
    target = np.full(len(preds.cls), -1, np.int64)
    target[pair_pred[best[first]]] = pair_gt[best[first]]
    return target


def _summarise(verb: np.ndarray, score: np.ndarray, tp: np.ndarray, n_gt: np.ndarray,
               thesis_verbs: Sequence[int], verb_names: Optional[Sequence[str]]) -> dict:
    """Per-verb AP and the means of rules 4-6 from the recorded triplets of verbs with GT."""
    by_verb = hico.order_by(verb, score)  # equal scores keep the recording order
    verb, tp = verb[by_verb], tp[by_verb]
    starts = np.flatnonzero(np.diff(verb, prepend=-1))
    seg_verb = verb[starts]
    rec, prec = ap_lib.precision_recall(tp, starts, n_gt[seg_verb])
    ap = np.zeros(len(n_gt))
    n_pred, n_tp = np.zeros(len(n_gt), np.int64), np.zeros(len(n_gt), np.int64)
    ap[seg_verb] = ap_lib.voc11_ap(rec, prec, starts)
    n_pred[seg_verb] = np.diff(np.append(starts, len(verb)))
    n_tp[seg_verb] = np.add.reduceat(tp.astype(np.int64), starts) if len(starts) else 0
    per_verb = {}
    for v in np.flatnonzero(n_gt > 0).tolist():
        per_verb[v] = {"ap": float(ap[v]), "n_gt": int(n_gt[v]), "n_pred": int(n_pred[v]),
                       "n_tp": int(n_tp[v]), "max_recall": int(n_tp[v]) / int(n_gt[v])}
        if verb_names is not None:
            per_verb[v] = {"name": verb_names[v], **per_verb[v]}
    thesis = [int(v) for v in thesis_verbs]
    if any(not 0 <= v < len(n_gt) for v in thesis):
        raise ValueError(f"evaluate: thesis_verbs {thesis} must lie in [0, {len(n_gt)})")
    return {
        "mAP_all": _mean([stats["ap"] for stats in per_verb.values()]),
        # The reference's defaultdict: a thesis verb without GT is an AP of 0 in the mean.
        "mAP_thesis": _mean([per_verb[v]["ap"] if v in per_verb else 0.0 for v in thesis]),
        "n_verbs_with_gt": len(per_verb),
        "thesis_verbs_without_gt": sorted(v for v in thesis if v not in per_verb),
        "per_verb": per_verb,
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _labels(images: Sequence[Mapping], field: str, n_boxes: np.ndarray) -> np.ndarray:
    """[sum n] int64 box labels of all images, checked against the number of boxes."""
    out = []
    for i, image in enumerate(images):
        if field not in image:
            raise ValueError(f"evaluate: image {i} has no field '{field}'")
        labels = np.asarray(image[field]).reshape(-1)
        if len(labels) != n_boxes[i] or (len(labels) and labels.dtype.kind not in "iu"
                                         and (labels != np.floor(labels)).any()):
            raise ValueError(f"evaluate: image {i} field '{field}' must hold one integer label "
                             f"per box ({n_boxes[i]}), got {labels.tolist()[:8]}...")
        out.append(labels.astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _flatten_gts(images: Sequence[Mapping], num_verbs: int) -> _Gts:
    """Concatenates and validates the GT of all images (box ids made global)."""
    boxes = [hico._rows(im, i, "gt_boxes", (4,), np.float64) for i, im in enumerate(images)]
    hois = [hico._rows(im, i, "gt_hois", (3, 4), np.int64)[:, :3]
            for i, im in enumerate(images)]
    n_boxes = np.array([len(b) for b in boxes], np.int64)
    labels = _labels(images, "gt_box_labels", n_boxes)
    offsets = np.cumsum(n_boxes) - n_boxes
    image = np.repeat(np.arange(len(images)), [len(h) for h in hois])
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    hois = np.concatenate(hois) if hois else np.zeros((0, 3), np.int64)
    hico._check(~np.isfinite(boxes).all(1), np.repeat(np.arange(len(images)), n_boxes),
                "gt_boxes", "non-finite coordinate", boxes)
    for col, name, low, high in ((0, "subject index", 0, n_boxes[image]),
                                 (1, "object index", -1, n_boxes[image]),
                                 (2, "verb", 0, num_verbs)):
        v = hois[:, col]
        hico._check((v < low) | (v >= high), image, "gt_hois", f"{name} out of range", v)
    obj = np.where(hois[:, 1] >= 0, hois[:, 1] + offsets[image], -1)
    return _Gts(boxes, labels, image, hois[:, 0] + offsets[image], obj, hois[:, 2])


def predictions_from_topk(topk: Mapping[str, np.ndarray]) -> list[dict]:
    """Turns `scoring.vcoco_topk` output for B images into `evaluate`'s prediction fields.

    As in the reference, each image's box list is its N subject boxes (label 0) then its N
    object boxes (the predicted labels), and pair j of query q is (q, N + q, verb, score).

    Args:
      topk: `vcoco_topk` output as numpy (`scores`, `verb_ids`, `query_ids` [B, k],
        `sub_xyxy`, `obj_xyxy` [B, N, 4], `obj_labels` [B, N]).

    Returns:
      B dicts with `pred_boxes` [2N, 4], `pred_box_labels` [2N] and `pred_hois` [k, 4]
      (float64); add `gt_boxes`, `gt_box_labels` and `gt_hois` to make an `EvalImage`.
    """
    queries = np.asarray(topk["query_ids"], np.float64)
    boxes = np.concatenate([np.asarray(topk["sub_xyxy"], np.float64),
                            np.asarray(topk["obj_xyxy"], np.float64)], axis=1)
    obj_labels = np.asarray(topk["obj_labels"], np.int64)
    labels = np.concatenate([np.zeros_like(obj_labels), obj_labels], axis=1)
    num_queries = obj_labels.shape[1]
    hois = np.stack([queries, queries + num_queries, np.asarray(topk["verb_ids"], np.float64),
                     np.asarray(topk["scores"], np.float64)], axis=-1)
    return [{"pred_boxes": b, "pred_box_labels": lab, "pred_hois": h}
            for b, lab, h in zip(boxes, labels, hois)]
