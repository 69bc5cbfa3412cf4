"""Post-processing (reference §7): triplet scores, top-k, and triplet NMS.

`hico_topk` runs on device (jnp, jittable) and turns the final-layer outputs into the top-k
(query, HOI class) triplets of every image with their boxes in pixels of the original image;
`vcoco_topk` does the same for V-COCO's (query, verb) pairs (§7.2, no NMS there).
`triplet_nms` / `triplet_nms_batch` run on the host (numpy) and reproduce the reference's triplet
NMS (`use_nms_filter`, rule 8 of `shared/fixtures/hico_eval/README.md`) decision for decision,
vectorised over all images at once so that a whole test set takes about a second.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Upper bound on the (higher-ranked, lower-ranked) same-class pairs handled at once by the NMS;
# 4M pairs keep the temporaries of one chunk near 0.5 GB even when every triplet of every
# image has the same HOI class.
_MAX_PAIRS_PER_CHUNK = 4_000_000


def cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2), as DETR's `box_cxcywh_to_xyxy`."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


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
    return cxcywh_to_xyxy(boxes) * scale


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


def triplet_nms(sub_boxes: np.ndarray, obj_boxes: np.ndarray, hoi_ids: np.ndarray,
                scores: np.ndarray, threshold: float, alpha: float, beta: float) -> np.ndarray:
    """Triplet NMS of one image; see `triplet_nms_batch` for the rule.

    Args:
      sub_boxes, obj_boxes: [P, 4] xyxy pixels of each triplet's subject and object.
      hoi_ids: [P] int HOI class of each triplet.
      scores: [P] float score of each triplet.
      threshold, alpha, beta: suppress when IoU_sub**alpha * IoU_obj**beta > threshold.

    Returns:
      [P'] int64 indices into the P triplets that are kept, in the reference's order.
    """
    image_ids = np.zeros(len(np.asarray(scores)), np.int64)
    return triplet_nms_batch(image_ids, sub_boxes, obj_boxes, hoi_ids, scores, threshold, alpha,
                             beta)


def triplet_nms_batch(image_ids: np.ndarray, sub_boxes: np.ndarray, obj_boxes: np.ndarray,
                      hoi_ids: np.ndarray, scores: np.ndarray, threshold: float, alpha: float,
                      beta: float) -> np.ndarray:
    """Triplet NMS of many images at once, identical to running the reference on each image.

    The reference's rule (`triplet_nms_filter` / `pairwise_nms`): per image and HOI class, visit
    the triplets by descending score (`argsort()[::-1]`, so among equal scores the later index
    comes first) and keep a triplet unless a kept one of the same class overlaps it by
    IoU_sub**alpha * IoU_obj**beta > threshold. A NaN overlap (zero union) also suppresses,
    because the reference keeps only candidates with `overlap <= threshold`.

    The IoU here is the reference NMS's +1-pixel formula with clamping: area = (x2-x1+1)(y2-y1+1),
    intersection = max(0, min x2 - max x1 + 1) * max(0, min y2 - max y1 + 1). It equals the
    evaluator's IoU (fixture README rule 1) whenever the boxes overlap, but has no strict
    overlap test: boxes that touch or miss each other by less than a pixel get a small positive
    IoU. That changes a decision only for sub-pixel boxes; we follow the reference code. The
    arithmetic is float64 where the reference used float32 model outputs, which can only matter
    for an overlap within ~1e-7 of the threshold.

    Output order, as the reference lists them: image by image, then class by class in order of
    each class's first triplet, then in NMS (score) order within a class.

    Args:
      image_ids: [T] int image of each triplet, non-decreasing (images contiguous).
      sub_boxes, obj_boxes: [T, 4] xyxy pixels.
      hoi_ids: [T] int HOI class.
      scores: [T] float score (finite).
      threshold, alpha, beta: suppress when IoU_sub**alpha * IoU_obj**beta > threshold.

    Returns:
      [T'] int64 indices into the T triplets that are kept.
    """
    image_ids, sub_boxes, obj_boxes, hoi_ids, scores = _check_nms_inputs(
        image_ids, sub_boxes, obj_boxes, hoi_ids, scores)
    total = len(scores)
    if total == 0:
        return np.zeros(0, np.int64)
    # Groups of (image, class); the stable sort keeps the original order inside a group, so a
    # group's first member is the class's first appearance in its image.
    group_key = image_ids * (int(hoi_ids.max()) + 1) + hoi_ids
    by_group = np.argsort(group_key, kind="stable")
    key = group_key[by_group]
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    sizes = np.diff(np.append(starts, total))
    first = np.empty(total, np.int64)
    first[by_group] = np.repeat(by_group[starts], sizes)
    # Only groups of two or more can suppress anything.
    members, rank, suppressed = _nms_multi_groups(by_group, starts, sizes, sub_boxes, obj_boxes,
                                                  scores, threshold, alpha, beta)
    keep = np.ones(total, bool)
    keep[members[suppressed]] = False
    kept = np.flatnonzero(keep)
    within = np.zeros(total, np.int64)
    within[members] = rank
    # Images are contiguous and ascending, so (first index of the class, NMS rank) is the
    # reference's order: image, class by first appearance, score.
    return kept[np.argsort(first[kept] * int(sizes.max()) + within[kept])]


def _nms_multi_groups(by_group, starts, sizes, sub_boxes, obj_boxes, scores, threshold, alpha,
                      beta):
    """Greedy NMS inside the groups of two or more triplets.

    Returns:
      members: [U] int64 triplet indices of those groups, group by group in NMS order (score
        descending; among equal scores the later index first, as the reference's
        `argsort()[::-1]` over a stably sorted group).
      rank: [U] position of each member inside its group.
      suppressed: [U] bool.
    """
    multi = sizes >= 2
    in_multi = np.repeat(multi, sizes)
    members = by_group[in_multi]
    group = np.repeat(np.arange(int(multi.sum())), sizes[multi])
    members = members[np.lexsort((-members, -scores[members], group))]
    m_sizes = sizes[multi]
    m_starts = np.cumsum(m_sizes) - m_sizes
    rank = np.arange(len(members)) - np.repeat(m_starts, m_sizes)
    suppressed = np.zeros(len(members), bool)
    for lo, hi in _chunks(m_starts, len(members)):
        chunk_starts = m_starts[(m_starts >= lo) & (m_starts < hi)] - lo
        suppressed[lo:hi] = _greedy_suppress(sub_boxes[members[lo:hi]], obj_boxes[members[lo:hi]],
                                             chunk_starts, threshold, alpha, beta)
    return members, rank, suppressed


def _check_nms_inputs(image_ids, sub_boxes, obj_boxes, hoi_ids, scores):
    """Converts to numpy and checks shapes and values; raises ValueError naming the field."""
    image_ids = np.asarray(image_ids).astype(np.int64, copy=False).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    hoi_ids = np.asarray(hoi_ids).astype(np.int64, copy=False).reshape(-1)
    t = len(scores)
    sub_boxes = np.asarray(sub_boxes, np.float64).reshape(-1, 4)
    obj_boxes = np.asarray(obj_boxes, np.float64).reshape(-1, 4)
    for name, n in (("image_ids", len(image_ids)), ("hoi_ids", len(hoi_ids)),
                    ("sub_boxes", len(sub_boxes)), ("obj_boxes", len(obj_boxes))):
        if n != t:
            raise ValueError(f"triplet NMS: '{name}' has {n} rows but 'scores' has {t}")
    if t and (np.diff(image_ids) < 0).any():
        raise ValueError("triplet NMS: 'image_ids' must be non-decreasing (images contiguous)")
    for name, ids in (("image_ids", image_ids), ("hoi_ids", hoi_ids)):
        if t and not 0 <= ids.min() <= ids.max() < 2**31:
            raise ValueError(f"triplet NMS: '{name}' must lie in [0, 2**31), got "
                             f"[{ids.min()}, {ids.max()}]")
    if not np.isfinite(scores).all():
        raise ValueError(f"triplet NMS: 'scores' has a non-finite value at index "
                         f"{np.flatnonzero(~np.isfinite(scores))[0]}")
    return image_ids, sub_boxes, obj_boxes, hoi_ids, scores


def _chunks(starts: np.ndarray, total: int):
    """Splits [0, total) at group starts into ranges holding at most ~_MAX_PAIRS_PER_CHUNK pairs."""
    sizes = np.diff(np.append(starts, total))
    pairs = np.cumsum(sizes * (sizes - 1) // 2)
    lo, done = 0, 0
    while lo < total:
        # Last group whose cumulative pair count fits; always take at least one group.
        g = max(np.searchsorted(pairs, done + _MAX_PAIRS_PER_CHUNK, side="right"),
                np.searchsorted(starts, lo, side="right"))
        hi = starts[g] if g < len(starts) else total
        done = pairs[g - 1]
        yield lo, hi
        lo = hi


def _greedy_suppress(sub: np.ndarray, obj: np.ndarray, starts: np.ndarray, threshold: float,
                     alpha: float, beta: float) -> np.ndarray:
    """[T] bool: suppressed triplets of groups laid out contiguously in NMS order.

    Only same-group pairs (a before b) are compared. Greedy NMS keeps a triplet iff no kept
    triplet earlier in its group suppresses it, so the decisions are taken rank by rank (rank =
    position inside the group): all triplets of rank r are final once ranks < r are done, and
    every group advances in the same vectorised step.
    """
    total = len(sub)
    sizes = np.diff(np.append(starts, total))
    rank = np.arange(total) - np.repeat(starts, sizes)
    n_later = np.repeat(starts + sizes, sizes) - np.arange(total) - 1
    a = np.repeat(np.arange(total), n_later)
    b = a + 1 + np.arange(len(a)) - np.repeat(np.cumsum(n_later) - n_later, n_later)
    overlap = (np.power(_pair_iou(sub, a, b), alpha) * np.power(_pair_iou(obj, a, b), beta))
    hits = ~(overlap <= threshold)  # NaN suppresses, as in the reference
    a, b = a[hits], b[hits]
    by_rank = np.argsort(rank[a], kind="stable")
    a, b = a[by_rank], b[by_rank]
    bounds = np.flatnonzero(np.diff(rank[a])) + 1
    suppressed = np.zeros(total, bool)
    for a_r, b_r in zip(np.split(a, bounds), np.split(b, bounds)):
        suppressed[b_r[~suppressed[a_r]]] = True
    return suppressed


def nms_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of the reference NMS: +1-pixel areas, clamped intersection.

    Args:
      a, b: [X, 4] xyxy pixels; `a` holds the higher-ranked boxes.

    Returns:
      [X] float64; NaN where the union is 0 (degenerate boxes), as in the reference.
    """
    n = len(a)
    return _pair_iou(np.concatenate([a, b]).astype(np.float64), np.arange(n), n + np.arange(n))


def _pair_iou(boxes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[X] IoU of boxes[a] with boxes[b] (boxes [U, 4] float64), in the reference's operations."""
    x1, y1, x2, y2 = np.ascontiguousarray(boxes.T)  # per-coordinate gathers stay contiguous
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    w = np.maximum(0.0, np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b]) + 1)
    h = np.maximum(0.0, np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b]) + 1)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area[a] + area[b] - inter)
