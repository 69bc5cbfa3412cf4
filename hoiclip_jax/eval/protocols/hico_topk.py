"""HICO-Det's per-image predictions from the device top-k (`scoring.hico_topk`): the reference's
box list (N subjects, then N objects) and pair rows, with the triplet NMS (`eval.nms`)."""
from typing import Mapping, Optional, Sequence

import numpy as np

from hoiclip_jax.eval import nms


def prediction_from_topk(topk: Mapping[str, np.ndarray], use_nms: bool, nms_threshold: float,
                         nms_alpha: float, nms_beta: float) -> dict:
    """`predictions_from_topk` for one image (`scores` [k], ..., `sub_xyxy` [N, 4]).

    For a whole test set, stack the images and call `predictions_from_topk` once: its NMS is
    vectorised over images, ~4x faster than one call per image on the HICO test set.
    """
    batched = {key: np.asarray(value)[None] for key, value in topk.items()}
    return predictions_from_topk(batched, use_nms, nms_threshold, nms_alpha, nms_beta)[0]


def predictions_from_topk(topk: Mapping[str, np.ndarray], use_nms: bool, nms_threshold: float,
                          nms_alpha: float, nms_beta: float,
                          names: Optional[Sequence[str]] = None) -> list[dict]:
    """Turns `scoring.hico_topk` output for B images into `evaluate`'s prediction fields.

    As in the reference, each image's box list is its N subject boxes then its N object boxes,
    and triplet j of query q is (subject id q, object id N + q, HOI class, score).

    Args:
      topk: `hico_topk` output as numpy (`scores`, `hoi_ids`, `query_ids` [B, k], `sub_xyxy`,
        `obj_xyxy` [B, N, 4]); one image is B = 1.
      use_nms: apply the triplet NMS (`config.eval.use_nms`).
      nms_threshold, nms_alpha, nms_beta: its parameters (`config.eval.nms_*`).
      names: the B images' file names, for errors (default: their positions).

    Returns:
      B dicts with `pred_boxes` [2N, 4] and `pred_hois` [k' <= k, 4] (float64); add `gt_boxes`
      and `gt_hois` to make an `EvalImage`.

    Raises:
      ValueError: a non-finite score or box (a diverged model), naming the first such image:
        it would otherwise be dropped or mis-ranked and give a silently wrong mAP.
    """
    _check_finite_topk(topk, names)
    scores = np.asarray(topk["scores"], np.float64)
    queries = np.asarray(topk["query_ids"], np.float64)
    boxes = np.concatenate([np.asarray(topk["sub_xyxy"], np.float64),
                            np.asarray(topk["obj_xyxy"], np.float64)], axis=1)
    num_queries = boxes.shape[1] // 2
    hois = np.stack([queries, queries + num_queries,
                     np.asarray(topk["hoi_ids"], np.float64), scores], axis=-1)
    if not use_nms:
        return [{"pred_boxes": b, "pred_hois": h} for b, h in zip(boxes, hois)]
    batch, k = scores.shape
    sub = np.take_along_axis(boxes, queries.astype(np.int64)[..., None], axis=1)  # [B, k, 4]
    obj = np.take_along_axis(boxes, (queries + num_queries).astype(np.int64)[..., None], axis=1)
    keep = nms.triplet_nms_batch(np.repeat(np.arange(batch), k), sub.reshape(-1, 4),
                                         obj.reshape(-1, 4), hois[..., 2].reshape(-1),
                                         scores.reshape(-1), nms_threshold, nms_alpha, nms_beta)
    per_image = np.split(keep % k, np.cumsum(np.bincount(keep // k, minlength=batch))[:-1])
    return [{"pred_boxes": b, "pred_hois": h[kept]} for b, h, kept in zip(boxes, hois, per_image)]


def _check_finite_topk(topk: Mapping[str, np.ndarray], names: Optional[Sequence[str]]) -> None:
    for field in ("scores", "sub_xyxy", "obj_xyxy"):
        value = np.asarray(topk[field], np.float64)
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            image = f"image {i}" if names is None else f"image {names[i]!r} (#{i})"
            raise ValueError(f"predictions: {image} has a non-finite value in '{field}' "
                             f"({int(bad.sum())} of {len(value)} images have one); the model "
                             f"output is NaN or inf, no mAP is computed")
