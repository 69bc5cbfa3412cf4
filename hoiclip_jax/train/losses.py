"""Set losses of HOICLIP given a matching (reference §2.2).

Every term is computed for all decoder layers at once ([L] vectors) and then named: the final
layer (L - 1) unsuffixed, aux layer l as `<term>_<l>`.

Normalisers (`loss_config.normalizer`): 'global' divides each term by a count over the whole batch
given; inside `jit` over a sharded batch that is the global batch. 'per_device' reproduces the
reference on D GPUs (§2.2, §11 item 6): the batch is cut into D contiguous groups (the shards of the
'data' mesh axis), the focal, object-CE and object-box terms of each group are divided by the
group's own count, the subject-box terms by the global pair count / D, and the D group losses are
averaged (DDP averages the per-GPU gradients). Both modes are one code path: 'global' is one group.

Matching contract (hoiclip_jax/train/matching.py): `indices [L, B, M]` holds for each GT pair the
query matched to it, -1 for padding or no match.
"""
import re

import jax
import jax.numpy as jnp

from hoiclip_jax.lib import box_ops

# Probability clamp of the focal loss (reference: clamp(sigmoid, 1e-4, 1 - 1e-4)).
_FOCAL_CLAMP = 1e-4
_FOCAL_GAMMA = 2
# The coefficient of each term, by base name (layer suffix removed).
_TERM_COEFS = {
        "loss_hoi_labels": "hoi_coef",
        "loss_obj_ce": "obj_coef",
        "loss_sub_bbox": "bbox_coef",
        "loss_obj_bbox": "bbox_coef",
        "loss_sub_giou": "giou_coef",
        "loss_obj_giou": "giou_coef",
}
_TOP_K_RECALL = 5
NORMALIZERS = ("global", "per_device")


def normalizer_groups(loss_config, num_devices: int) -> int:
    """Number of batch groups with their own normalisers: 1 ('global') or `num_devices`."""
    if loss_config.normalizer not in NORMALIZERS:
        raise ValueError(f"config.loss.normalizer = {loss_config.normalizer!r} is not one of "
                         f"{NORMALIZERS}")
    return num_devices if loss_config.normalizer == "per_device" else 1


def _group_sum(x: jnp.ndarray, groups: int) -> jnp.ndarray:
    """Sums x [L, B, ...] over everything but the layer, per contiguous batch group: [L, G]."""
    num_layers, b = x.shape[:2]
    if b % groups:
        raise ValueError(f"batch of {b} images does not split into {groups} normaliser groups")
    return x.reshape(num_layers, groups, -1).sum(-1)


def query_to_gt(indices: jnp.ndarray, pair_mask: jnp.ndarray, num_queries: int) -> jnp.ndarray:
    """Inverts the matching: [L, B, M] query per GT -> [L, B, N] GT column per query (-1 none).

    Entries of `indices` that are negative, out of range or on padded GT columns are ignored.
    """
    num_layers, b, m = indices.shape
    valid = (indices >= 0) & (indices < num_queries) & pair_mask[None]
    query = jnp.where(valid, indices, num_queries)  # out of range: dropped by the scatter
    layer_ix = jnp.arange(num_layers)[:, None, None]
    image_ix = jnp.arange(b)[None, :, None]
    gt_ix = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), indices.shape)
    empty = jnp.full((num_layers, b, num_queries), -1, jnp.int32)
    return empty.at[layer_ix, image_ix, query].set(gt_ix, mode="drop")


def _gather(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """x [L or 1, B, S, ...] gathered on axis 2 at index [L, B, T] (-1 reads 0): [L, B, T, ...]."""
    index = jnp.clip(index, 0)
    index = index.reshape(index.shape + (1,) * (x.ndim - 3))
    shape = index.shape[:3] + x.shape[3:]
    return jnp.take_along_axis(jnp.broadcast_to(x, shape[:2] + x.shape[2:]),
                               jnp.broadcast_to(index, shape), axis=2)


def focal_hoi_loss(logits: jnp.ndarray, target: jnp.ndarray, alpha: float,
                   groups: int = 1, num_pos=None) -> jnp.ndarray:
    """CornerNet-style focal loss over all [B, N, K] entries of each layer.

    Args:
      logits: [L, B, N, K] HOI logits.
      target: [L, B, N, K] multi-hot targets (0 for unmatched queries).
      alpha: weight of the positive term; the negative one gets 1 - alpha.
      groups: contiguous batch groups normalised on their own, then averaged.
      num_pos: [G] or [L, G] positive counts to divide by instead of the counts of `target`
        (microbatches: the counts of the whole batch, `label_normalizers`).

    Returns:
      [L]: -(sum pos + sum neg) / num_pos, or -sum neg where a group has no positive label.
    """
    p = jnp.clip(jax.nn.sigmoid(logits), _FOCAL_CLAMP, 1 - _FOCAL_CLAMP)
    is_pos = (target == 1).astype(jnp.float32)
    is_neg = (target < 1).astype(jnp.float32)
    pos = alpha * jnp.log(p) * (1 - p) ** _FOCAL_GAMMA * is_pos
    neg = (1 - alpha) * jnp.log(1 - p) * p ** _FOCAL_GAMMA * is_neg
    num_pos = _group_sum(is_pos, groups) if num_pos is None else num_pos
    pos_sum, neg_sum = _group_sum(pos, groups), _group_sum(neg, groups)
    # max(num_pos, 1) keeps the unused branch (and its gradient) finite.
    per_group = jnp.where(num_pos > 0, -(pos_sum + neg_sum) / jnp.maximum(num_pos, 1), -neg_sum)
    return per_group.mean(-1)


def obj_ce_loss(logits: jnp.ndarray, target: jnp.ndarray, eos_coef: float,
                groups: int = 1, weight_sum=None) -> jnp.ndarray:
    """Weighted softmax CE: [L, B, N, O+1] logits, [L, B, N] class -> [L] sum(w ce) / sum(w).

    The last class is "no object" and weighs `eos_coef`; the others weigh 1. With `groups` > 1
    the ratio is taken per contiguous batch group and averaged over the groups. `weight_sum`
    ([G] or [L, G]) replaces sum(w) (microbatches: the whole batch's, `label_normalizers`).
    """
    no_object = logits.shape[-1] - 1
    log_p = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]
    w = jnp.where(target == no_object, eos_coef, 1.0)
    weight_sum = _group_sum(w, groups) if weight_sum is None else weight_sum
    return (_group_sum(w * ce, groups) / weight_sum).mean(-1)


def _masked_mean(values: jnp.ndarray, mask: jnp.ndarray, normaliser, groups: int) -> jnp.ndarray:
    """Per-group sums of values [L, B, M] where mask, divided by normaliser ([L, G] or scalar),
    averaged over the groups: [L]."""
    return (_group_sum(jnp.where(mask, values, 0.0), groups) / normaliser).mean(-1)


def _pair_count(pair_mask: jnp.ndarray, groups: int) -> jnp.ndarray:
    """Subject-box normaliser: the batch's real GT pairs / groups, at least 1."""
    return jnp.maximum(pair_mask.sum().astype(jnp.float32) / groups, 1.0)


def box_losses(pred_sub: jnp.ndarray, pred_obj: jnp.ndarray, batch: dict,
               matched: jnp.ndarray, groups: int = 1, normalizers=None) -> dict:
    """L1 and GIoU losses of the matched pairs (§2.2), each [L].

    Args:
      pred_sub, pred_obj: [L, B, M, 4] cxcywh boxes of the query matched to each GT pair.
      batch: `sub_boxes`, `obj_boxes [B, M, 4]` cxcywh, `obj_exists`, `pair_mask [B, M]`.
      matched: [L, B, M] True where GT pair m got a query.
      groups: contiguous batch groups (devices) normalised on their own, then averaged.
      normalizers: optional `num_pairs` (scalar) and `num_obj` ([G]) to divide by instead of
        this batch's counts (microbatches: `label_normalizers` of the whole batch).

    Subject terms are divided by the number of real GT pairs of the whole batch / groups (the
    reference's all-reduced count / world size), clamped >= 1; object terms only count pairs
    whose object exists and each group divides by its own number of them + 1e-4.
    """
    num_pairs = _pair_count(batch["pair_mask"], groups)
    obj_matched = matched & batch["obj_exists"][None]
    num_obj = _group_sum(obj_matched.astype(jnp.float32), groups) + 1e-4
    if normalizers is not None:
        num_pairs, num_obj = normalizers["num_pairs"], normalizers["num_obj"]
    gt_sub, gt_obj = batch["sub_boxes"][None], batch["obj_boxes"][None]
    l1 = lambda pred, gt: jnp.abs(pred - gt).sum(-1)
    one_minus_giou = lambda pred, gt: 1 - box_ops.elementwise_giou(
            box_ops.cxcywh_to_xyxy(pred), box_ops.cxcywh_to_xyxy(gt))
    return {
            "loss_sub_bbox": _masked_mean(l1(pred_sub, gt_sub), matched, num_pairs, groups),
            "loss_obj_bbox": _masked_mean(l1(pred_obj, gt_obj), obj_matched, num_obj, groups),
            "loss_sub_giou": _masked_mean(one_minus_giou(pred_sub, gt_sub), matched, num_pairs,
                                          groups),
            "loss_obj_giou": _masked_mean(one_minus_giou(pred_obj, gt_obj), obj_matched, num_obj,
                                          groups),
    }


def _per_query_targets(indices: jnp.ndarray, batch: dict, num_queries: int,
                       no_object: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-query HOI targets [L, B, N, K] (0 if unmatched) and object classes [L, B, N]."""
    gt_of_query = query_to_gt(indices, batch["pair_mask"], num_queries)
    has_gt = gt_of_query >= 0
    hoi = _gather(batch["hoi_labels"][None], gt_of_query) * has_gt[..., None]
    obj = jnp.where(has_gt, _gather(batch["obj_labels"][None], gt_of_query), no_object)
    return hoi, obj


def _metrics(outputs: dict, batch: dict, indices: jnp.ndarray, matched: jnp.ndarray) -> dict:
    """Logged-only metrics of the final layer over the matched pairs, in percent.

    `obj_class_error`: share of matched pairs whose argmax object class is wrong.
    `hoi_top5_recall`: share of the GT HOI labels of matched pairs found in the top 5 HOI
    classes of their query. Both are 0 when nothing is matched.
    """
    last = lambda x: jax.lax.stop_gradient(x[-1:])
    final, ok = indices[-1:], matched[-1]
    obj_logits = _gather(last(outputs["obj_logits"]), final)[0]  # [B, M, O+1]
    wrong = (jnp.argmax(obj_logits, -1) != batch["obj_labels"]) & ok
    hoi_logits = _gather(last(outputs["hoi_logits"]), final)[0]  # [B, M, K]
    _, top = jax.lax.top_k(hoi_logits, min(_TOP_K_RECALL, hoi_logits.shape[-1]))
    hits = jnp.take_along_axis(batch["hoi_labels"], top, axis=-1).sum(-1)
    labels = batch["hoi_labels"].sum(-1)
    return {
            "obj_class_error": 100.0 * wrong.sum() / jnp.maximum(ok.sum(), 1),
            "hoi_top5_recall": 100.0 * jnp.where(ok, hits, 0).sum()
                               / jnp.maximum(jnp.where(ok, labels, 0).sum(), 1),
    }


def _name_layers(per_layer: dict) -> dict:
    """{term: [L]} -> {term: final-layer scalar, term_l: aux layer l}."""
    named = {}
    for term, values in per_layer.items():
        named[term] = values[-1]
        named.update({f"{term}_{l}": values[l] for l in range(values.shape[0] - 1)})
    return named


def label_normalizers(batch: dict, loss_config, num_devices: int, num_queries: int) -> dict:
    """The loss normalisers of `batch` computed from its labels alone, per normaliser group.

    They equal the counts `set_losses` takes from the matching whenever every real GT pair is
    matched, which the Hungarian assignment guarantees when no image has more real pairs than
    there are queries (`check_microbatching`). A microbatched step computes them once for the
    whole (global) batch and hands them to every microbatch's `set_losses`, so that the summed
    microbatch losses and gradients equal the full batch's (DETR divides by whole-batch counts).

    Returns:
      `num_pos` [G] (positive HOI labels), `weight_sum` [G] (object-CE weights: 1 per matched
      query, `eos_coef` per unmatched one), `num_pairs` scalar (real pairs / G, >= 1) and
      `num_obj` [G] (pairs with an object, + 1e-4).
    """
    groups = normalizer_groups(loss_config, num_devices)
    pair_mask = jnp.asarray(batch["pair_mask"], bool)
    real = pair_mask.astype(jnp.float32)[None]                       # [1, B, M]
    hoi = jnp.asarray(batch["hoi_labels"], jnp.float32)
    per_group = lambda x: _group_sum(x, groups)[0]
    pairs_per_image = real.sum(-1)                                   # [1, B]
    return {
            "num_pos": per_group((hoi == 1).sum(-1) * real),
            # Matched queries weigh 1, the other num_queries - pairs weigh eos_coef.
            "weight_sum": per_group(loss_config.eos_coef * (num_queries - pairs_per_image)
                                    + pairs_per_image),
            "num_pairs": _pair_count(pair_mask, groups),
            "num_obj": per_group(real * jnp.asarray(batch["obj_exists"], jnp.float32)[None])
                       + 1e-4,
    }


def set_losses(outputs: dict, batch: dict, indices: jnp.ndarray, loss_config,
               num_devices: int = 1, normalizers=None) -> dict:
    """The six §2.2 terms for every decoder layer, plus logged-only metrics.

    Args:
      outputs: model outputs (docs/design.md): `hoi_logits [L, B, N, K]`, `obj_logits
        [L, B, N, O+1]` (last entry = no object), `sub_boxes`, `obj_boxes [L, B, N, 4]` cxcywh.
      batch: the batch dict of docs/design.md (GT boxes cxcywh normalised, `pair_mask [B, M]`).
      indices: [L, B, M] int32 query matched to each GT pair, -1 for none.
      loss_config: `focal_alpha`, `eos_coef`, `normalizer` ('global' | 'per_device').
      num_devices: size of the mesh's 'data' axis; with 'per_device' normalisers the batch is
        cut into this many contiguous groups, one per device shard (B must divide by it).
      normalizers: `label_normalizers` of a larger batch that this one is a microbatch of; the
        loss terms are then that batch's terms restricted to these images (they add up over
        the microbatches). None: this batch's own counts.

    Returns:
      {name: scalar}: `loss_*` terms (final layer unsuffixed, aux layers `_0`, `_1`, ...) and the
      metrics `obj_class_error`, `hoi_top5_recall` (final layer, not to be optimised).
    """
    outputs = {k: jnp.asarray(v, jnp.float32) for k, v in outputs.items()
               if k in ("hoi_logits", "obj_logits", "sub_boxes", "obj_boxes")}
    batch = dict(batch, pair_mask=jnp.asarray(batch["pair_mask"], bool),
                 obj_exists=jnp.asarray(batch["obj_exists"], bool),
                 hoi_labels=jnp.asarray(batch["hoi_labels"], jnp.float32))
    groups = normalizer_groups(loss_config, num_devices)
    num_queries, no_object = outputs["obj_logits"].shape[2], outputs["obj_logits"].shape[3] - 1
    hoi_target, obj_target = _per_query_targets(indices, batch, num_queries, no_object)
    n = normalizers or {}
    matched = (indices >= 0) & (indices < num_queries) & batch["pair_mask"][None]
    per_layer = {
            "loss_hoi_labels": focal_hoi_loss(outputs["hoi_logits"], hoi_target,
                                              loss_config.focal_alpha, groups, n.get("num_pos")),
            "loss_obj_ce": obj_ce_loss(outputs["obj_logits"], obj_target, loss_config.eos_coef,
                                       groups, n.get("weight_sum")),
            **box_losses(_gather(outputs["sub_boxes"], indices),
                         _gather(outputs["obj_boxes"], indices), batch, matched, groups,
                         normalizers),
    }
    return {**_name_layers(per_layer), **_metrics(outputs, batch, indices, matched)}


def total_loss(terms: dict, loss_config) -> jnp.ndarray:
    """Weighted sum of the `loss_*` terms; the coefficient is chosen by the term's base name.

    Other entries (metrics) are ignored. An unknown `loss_*` name raises a ValueError.
    """
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        if not name.startswith("loss_"):
            continue
        base = re.sub(r"_\d+$", "", name)
        if base not in _TERM_COEFS:
            raise ValueError(f"loss term {name!r} has no coefficient; known terms: "
                             f"{sorted(_TERM_COEFS)}")
        total = total + getattr(loss_config, _TERM_COEFS[base]) * value
    return total
