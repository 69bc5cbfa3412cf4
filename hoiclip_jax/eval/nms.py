"""Triplet NMS on the host (numpy), reference §7.1: `triplet_nms` / `triplet_nms_batch`
reproduce the reference's `use_nms_filter` (rule 8 of `tests/fixtures/hico_eval/README.md`)
decision for decision, vectorised over all images at once so that a whole test set takes about a
second.
"""
import numpy as np

# Upper bound on the (higher-ranked, lower-ranked) same-class pairs handled at once by the NMS;
# 4M pairs keep the temporaries of one chunk near 0.5 GB even when every triplet of every
# image has the same HOI class.
_MAX_PAIRS_PER_CHUNK = 4_000_000


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
