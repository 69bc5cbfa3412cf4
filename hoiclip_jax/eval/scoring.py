"""Top-k triplets on device (reference §7): the final-layer outputs of a batch -> the top-k
(query, HOI class) triplets of every image with their boxes in pixels of the original image
(`hico_topk`, §7.1), or V-COCO's top (query, verb) pairs (`vcoco_topk`, §7.2, no NMS there).
jnp and jittable; the host-side triplet NMS is `hoiclip_jax.eval.nms`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from hoiclip_jax.lib import box_ops


@functools.partial(jax.jit, static_argnames=("k",))
def hico_topk(hoi_logits: jnp.ndarray, obj_logits: jnp.ndarray, sub_boxes: jnp.ndarray,
              obj_boxes: jnp.ndarray, orig_size: jnp.ndarray, hoi_to_obj: jnp.ndarray,
              k: int, hoi_bonus: jnp.ndarray | None = None) -> dict[str, jnp.ndarray]:
    """Top-k HOI triplets per image, scored as the reference's HICO evaluator does (§7.1).

    score[q, c] = sigmoid(hoi_logits)[q, c] + sigmoid(obj_logits)[q, hoi_to_obj[c]] ** 2: a sum,
    with sigmoid (not softmax) object scores; the "no object" logit is never read. The top k are
    taken over the flattened N * K scores of each image, in descending order.

    Ties: `jax.lax.top_k` returns distinct (query, class) entries, the lower flat index first.
    The reference maps every top score back to the *first* flat index holding that value, so a
    tie there duplicates one triplet and drops the other. With no tied scores (the usual case
    for float32 model outputs) both give the same list.

    Args:
      hoi_logits: [B, N, K] final-layer HOI logits.
      obj_logits: [B, N, O + 1] final-layer object logits (last entry: no object).
      sub_boxes: [B, N, 4] subject boxes, cxcywh normalised by the unpadded image size.
      obj_boxes: [B, N, 4] object boxes, same convention.
      orig_size: [B, 2] (h, w) of the original images, in pixels.
      hoi_to_obj: [K] int object index of each HOI class.
      k: number of triplets kept per image (static), 1 <= k <= N * K.
      hoi_bonus: optional [B, K] added to sigmoid(hoi_logits) of every query of an image
        (training-free enhancement, `hoiclip_jax.tfe`).

    Returns:
      Dict with `scores` [B, k] f32 (descending), `hoi_ids` [B, k] i32, `query_ids` [B, k] i32
      (the triplet's subject box is `sub_xyxy[query]`, its object box `obj_xyxy[query]`), and
      `sub_xyxy`, `obj_xyxy` [B, N, 4] xyxy in pixels of the original image.
    """
    batch, num_queries, num_hois = hoi_logits.shape
    if not 1 <= k <= num_queries * num_hois:
        raise ValueError(f"hico_topk: k={k} must be in [1, N*K={num_queries * num_hois}]")
    obj_scores = jax.nn.sigmoid(obj_logits)
    scores = _hoi_scores(hoi_logits, hoi_bonus) + jnp.take(obj_scores, hoi_to_obj, axis=-1) ** 2
    return _top_pairs(scores, "hoi_ids", k, sub_boxes, obj_boxes, orig_size)


def _top_pairs(scores: jnp.ndarray, class_key: str, k: int, sub_boxes: jnp.ndarray,
               obj_boxes: jnp.ndarray, orig_size: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """The k best (query, class) entries of `scores` [B, N, C] per image: `scores`,
    `<class_key>`, `query_ids` [B, k] and the queries' boxes in pixels [B, N, 4]."""
    batch, num_queries, num_classes = scores.shape
    top_scores, flat = jax.lax.top_k(scores.reshape(batch, num_queries * num_classes), k)
    return {
        "scores": top_scores,
        class_key: (flat % num_classes).astype(jnp.int32),
        "query_ids": (flat // num_classes).astype(jnp.int32),
        "sub_xyxy": pixel_xyxy(sub_boxes, orig_size),
        "obj_xyxy": pixel_xyxy(obj_boxes, orig_size),
    }


def _hoi_scores(hoi_logits: jnp.ndarray, hoi_bonus: jnp.ndarray | None) -> jnp.ndarray:
    """sigmoid(hoi_logits) [B, N, K], plus `hoi_bonus` [B, K] for every query when given."""
    scores = jax.nn.sigmoid(hoi_logits)
    return scores if hoi_bonus is None else scores + hoi_bonus[:, None, :].astype(scores.dtype)


def pixel_xyxy(boxes: jnp.ndarray, orig_size: jnp.ndarray) -> jnp.ndarray:
    """[B, N, 4] cxcywh normalised -> [B, N, 4] xyxy in pixels of the original image.

    Args:
      boxes: [B, N, 4] cxcywh normalised by the unpadded image size.
      orig_size: [B, 2] (h, w) of the original images, in pixels.
    """
    height, width = orig_size[:, 0], orig_size[:, 1]
    scale = jnp.stack([width, height, width, height], axis=-1).astype(boxes.dtype)[:, None]
    return box_ops.cxcywh_to_xyxy(boxes) * scale


def vcoco_correct_mat(hoi_to_verb: np.ndarray, hoi_to_obj: np.ndarray, num_verbs: int,
                      num_obj_logits: int) -> np.ndarray:
    """[V, O + 1] float32 verb-object validity: 1 where (verb, object) is an HOI class.

    The stand-in for the reference's `corre_vcoco.npy` (not released) that the V-COCO fixtures
    use (`tests/fixtures/vcoco_eval/README.md`, rule 8): 1 iff (v, o) is an HOI class of the
    table (all 29 verbs have a (verb, no-object) class), plus the column of ones that the
    reference appends for the last logit. `vcoco_topk` reads only the columns of labels it can
    predict (0..O-1), so the real `corre_vcoco.npy` [V, O - 1] with a ones column appended for
    the no-object label also works there.

    Args:
      hoi_to_verb, hoi_to_obj: [K] int verb and object index of each HOI class.
      num_verbs: V.
      num_obj_logits: O + 1, the width of the object logits (V-COCO: 82).
    """
    mat = np.zeros((num_verbs, num_obj_logits), np.float32)
    mat[np.asarray(hoi_to_verb), np.asarray(hoi_to_obj)] = 1.0
    mat[:, -1] = 1.0
    return mat


@functools.partial(jax.jit, static_argnames=("k",))
def vcoco_topk(hoi_logits: jnp.ndarray, obj_logits: jnp.ndarray, sub_boxes: jnp.ndarray,
               obj_boxes: jnp.ndarray, orig_size: jnp.ndarray, hoi_to_obj: jnp.ndarray,
               hoi_to_verb: jnp.ndarray, correct_mat: jnp.ndarray,
               k: int, hoi_bonus: jnp.ndarray | None = None) -> dict[str, jnp.ndarray]:
    """Top-k (query, verb) pairs per image, scored as the reference's V-COCO evaluator (§7.2).

    As `vcoco_eval.py` with score_mode 1 (rule 8 of `tests/fixtures/vcoco_eval/README.md`):
      s[q, c] = sigmoid(hoi_logits)[q, c] + sigmoid(obj_logits)[q, hoi_to_obj[c]] ** 2;
      verb score[q, v] = max of s[q, c] over the HOI classes c of verb v;
      times correct_mat[v, label[q]], label[q] = argmax of softmax(obj_logits[q])[:-1], i.e. the
      predicted object over the O table objects, V-COCO's no-object class (80) included and the
      last ("nothing") logit left out, as `PostProcessHOITriplet` does;
      then the k best of the flattened N * V scores, descending.
    Ties: `jax.lax.top_k` puts the lower flat index (q * V + v) first, the order of the
    reference's stable descending sort.

    Args:
      hoi_logits: [B, N, K] final-layer HOI logits.
      obj_logits: [B, N, O + 1] final-layer object logits (V-COCO: 81 objects + "nothing").
      sub_boxes, obj_boxes: [B, N, 4] cxcywh normalised by the unpadded image size.
      orig_size: [B, 2] (h, w) of the original images, in pixels.
      hoi_to_obj, hoi_to_verb: [K] int object and verb index of each HOI class.
      correct_mat: [V, C] verb-object validity, C >= O (`vcoco_correct_mat`).
      k: pairs kept per image (static), 1 <= k <= N * V.
      hoi_bonus: optional [B, K] added to sigmoid(hoi_logits) of every query (TFE).

    Returns:
      Dict with `scores` [B, k] (descending), `verb_ids` [B, k] i32, `query_ids` [B, k] i32,
      `sub_xyxy`, `obj_xyxy` [B, N, 4] xyxy pixels of the original image, and `obj_labels`
      [B, N] i32, the predicted object label of each query.
    """
    batch, num_queries, _ = hoi_logits.shape
    num_verbs, num_cols = correct_mat.shape
    num_labels = obj_logits.shape[-1] - 1
    if num_cols < num_labels:
        raise ValueError(f"vcoco_topk: correct_mat has {num_cols} columns, fewer than the "
                         f"{num_labels} object labels of obj_logits [.., {num_labels + 1}]")
    if not 1 <= k <= num_queries * num_verbs:
        raise ValueError(f"vcoco_topk: k={k} must be in [1, N*V={num_queries * num_verbs}]")
    obj_scores = jax.nn.sigmoid(obj_logits)
    hoi_scores = (_hoi_scores(hoi_logits, hoi_bonus)
                  + jnp.take(obj_scores, hoi_to_obj, axis=-1) ** 2)
    # Every HOI score is > 0, so 0 is a neutral start for the max (and a verb without HOI
    # classes scores 0 instead of -inf, which times a 0 in correct_mat would make NaN).
    verb_scores = jnp.zeros((batch, num_queries, num_verbs), hoi_scores.dtype)
    verb_scores = verb_scores.at[..., hoi_to_verb].max(hoi_scores)
    labels = jnp.argmax(jax.nn.softmax(obj_logits, axis=-1)[..., :-1], axis=-1)
    scores = verb_scores * jnp.take(correct_mat.T.astype(hoi_scores.dtype), labels, axis=0)
    return dict(_top_pairs(scores, "verb_ids", k, sub_boxes, obj_boxes, orig_size),
                obj_labels=labels.astype(jnp.int32))
