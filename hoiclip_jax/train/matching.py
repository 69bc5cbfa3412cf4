"""Hungarian matching of predicted HOI queries to GT pairs (reference §2.1).

The cost is computed on device for every decoder layer at once (`hoi_cost`). The linear sum
assignment runs where `config.matcher.backend` says:
- 'scipy' (default): on the host (`assign_host`, scipy). `match` calls the host function through
  one `jax.pure_callback` per step, inside `jax.shard_map` over the mesh's 'data' axis so that
  every device matches its own batch shard (a bare callback would gather the whole batch to
  device 0).
- 'device': inside the compiled step (`match_on_device`, optax's Hungarian algorithm, vmapped
  over layers and images): no host round trip, which on an accelerator saves the stall of the
  device-to-host copy and the Python callback.
Both give the same optimal assignment; where several assignments are optimal (exact ties) each
backend picks its own, deterministically.

Indices are returned per GT column: `indices[l, b, m]` is the query matched to GT pair `m` of
image `b` in layer `l`, or -1 when that pair is padding or got no query.
"""
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.sharding import NamedSharding, PartitionSpec as P

from hoiclip_jax.lib import box_ops
from hoiclip_jax.lib.sharding import DATA_AXIS

# Cost given to padded GT columns and to NaN/inf entries. Large but finite: scipy rejects inf
# and NaN, and the real costs are O(10).
PAD_COST = 1e6

HostTimer = Callable[[float, float], None]
# Observer of the host assignment for benchmarks (benchmarks/train_step.py): when set, it is
# called after every callback with the callback's `time.perf_counter()` start and end. Unset (the
# default) it costs one global read per callback; it never changes the traced step, so it can be
# set and cleared around an already compiled step.
_host_timer: Optional[HostTimer] = None


def set_host_timer(timer: Optional[HostTimer]) -> Optional[HostTimer]:
    """Installs `timer(start, end)` (None removes it); returns the previous one to restore."""
    global _host_timer
    previous, _host_timer = _host_timer, timer
    return previous


def _hoi_class_cost(hoi_logits: jnp.ndarray, hoi_labels: jnp.ndarray) -> jnp.ndarray:
    """C_hoi = -(p.t / (sum t + 1e-4) + (1-p).(1-t) / (sum (1-t) + 1e-4)) / 2.

    Args:
      hoi_logits: [L, B, N, K] predicted HOI logits.
      hoi_labels: [B, M, K] multi-hot GT labels.

    Returns:
      [L, B, N, M].
    """
    p = jax.nn.sigmoid(hoi_logits)
    t = hoi_labels
    # HIGHEST: on GPU the default float32 matmul precision is TF32, which would perturb the costs.
    einsum = lambda x, y: jnp.einsum("lbnk,bmk->lbnm", x, y, precision=jax.lax.Precision.HIGHEST)
    pos = einsum(p, t) / (t.sum(-1) + 1e-4)[None, :, None, :]
    neg = einsum(1 - p, 1 - t) / ((1 - t).sum(-1) + 1e-4)[None, :, None, :]
    return -(pos + neg) / 2


def _obj_class_cost(obj_logits: jnp.ndarray, obj_labels: jnp.ndarray) -> jnp.ndarray:
    """C_obj = -softmax(obj_logits)[gt object label]: [L, B, N, O+1] x [B, M] -> [L, B, N, M]."""
    prob = jax.nn.softmax(obj_logits, axis=-1)
    labels = jnp.clip(obj_labels, 0, obj_logits.shape[-1] - 1)  # padding may hold anything
    labels = jnp.broadcast_to(labels[None, :, None, :], prob.shape[:3] + labels.shape[-1:])
    return -jnp.take_along_axis(prob, labels, axis=-1)


def _box_costs(outputs: dict, batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
    """C_bbox and C_giou of reference §2.1, each [L, B, N, M].

    A pair without an object (V-COCO) is matched on its subject box alone: its object L1 is
    zeroed, and its object GIoU term is replaced by the subject's.
    """
    exists = batch["obj_exists"][None, :, None, :].astype(jnp.float32)
    l1 = lambda pred, gt: jnp.abs(pred[..., :, None, :] - gt[None, :, None, :, :]).sum(-1)
    sub_l1 = l1(outputs["sub_boxes"], batch["sub_boxes"])
    obj_l1 = l1(outputs["obj_boxes"], batch["obj_boxes"])
    c_bbox = jnp.maximum(sub_l1, obj_l1 * exists)

    giou = lambda pred, gt: box_ops.pairwise_giou(box_ops.cxcywh_to_xyxy(pred),
                                                  box_ops.cxcywh_to_xyxy(gt)[None])
    sub_giou = -giou(outputs["sub_boxes"], batch["sub_boxes"])
    obj_giou = -giou(outputs["obj_boxes"], batch["obj_boxes"])
    c_giou = jnp.maximum(sub_giou, obj_giou + sub_giou * (1 - exists))
    return c_bbox, c_giou


def hoi_cost(outputs: dict, batch: dict, matcher_config) -> jnp.ndarray:
    """Matching cost of every query against every GT pair, for every decoder layer (§2.1).

    C = cost_hoi * (cost_hoi * C_hoi) + cost_bbox * C_bbox + cost_giou * C_giou + cost_obj * C_obj.
    `cost_hoi` is applied twice, as in the reference (which multiplies by `set_cost_hoi` both when
    it forms C_hoi and in the weighted sum); at the published value 1 this is a no-op.

    Args:
      outputs: model outputs (docs/design.md): `hoi_logits [L, B, N, K]`, `obj_logits
        [L, B, N, O+1]`, `sub_boxes`, `obj_boxes [L, B, N, 4]` (cxcywh normalised).
      batch: `hoi_labels [B, M, K]`, `obj_labels [B, M]`, `sub_boxes`, `obj_boxes [B, M, 4]`
        (cxcywh normalised, zeros on padding), `obj_exists [B, M]`, `pair_mask [B, M]`.
      matcher_config: `cost_hoi`, `cost_obj`, `cost_bbox`, `cost_giou`.

    Returns:
      [L, B, N, M] float32 cost, gradient-stopped; padded GT columns and NaN/inf entries hold
      `PAD_COST`.
    """
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    outputs = {k: f32(outputs[k]) for k in ("hoi_logits", "obj_logits", "sub_boxes", "obj_boxes")}
    c_hoi = _hoi_class_cost(outputs["hoi_logits"], f32(batch["hoi_labels"]))
    c_obj = _obj_class_cost(outputs["obj_logits"], batch["obj_labels"])
    c_bbox, c_giou = _box_costs(outputs, {k: f32(batch[k]) for k in
                                          ("sub_boxes", "obj_boxes", "obj_exists")})
    w = matcher_config
    cost = (w.cost_hoi * (w.cost_hoi * c_hoi) + w.cost_bbox * c_bbox + w.cost_giou * c_giou
            + w.cost_obj * c_obj)
    real = jnp.asarray(batch["pair_mask"], bool)[None, :, None, :]
    cost = jnp.where(real, cost, PAD_COST)
    cost = jnp.nan_to_num(cost, nan=PAD_COST, posinf=PAD_COST, neginf=-PAD_COST)
    return jax.lax.stop_gradient(cost)


def assign_host(cost: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Optimal assignment of queries to GT columns, one scipy LSAP per matrix.

    Assumes the valid GT columns of matrix x are its first `n_valid[x]` columns (the loader packs
    the real pairs of an image first; `match` packs any mask on device before calling this).
    Never raises on well-shaped input, since it runs inside a callback: empty matrices are
    skipped, `n_valid` is clipped to [0, M] and non-finite costs are replaced by `PAD_COST`.

    With more valid GT columns than queries (n_valid > N) every query is still assigned and the
    GT columns left over get -1, like padding.

    Args:
      cost: [X, N, M] float cost (X = layers x images, N queries, M padded GT columns).
      n_valid: [X] int number of real GT columns of each matrix.

    Returns:
      [X, M] int32: for each GT column the matched query index, -1 for padding or no match.
    """
    cost = np.asarray(cost)
    n_valid = np.clip(np.asarray(n_valid).astype(np.int64), 0, cost.shape[2])
    if not np.isfinite(cost).all():  # one vectorised check; the per-matrix loop stays lean
        cost = np.nan_to_num(cost, nan=PAD_COST, posinf=PAD_COST, neginf=-PAD_COST)
    out = np.full((cost.shape[0], cost.shape[2]), -1, np.int32)
    for x in np.flatnonzero(n_valid):
        rows, cols = scipy.optimize.linear_sum_assignment(cost[x, :, :n_valid[x]])
        out[x, cols] = rows
    return out


def _host_callback(cost, n_valid) -> np.ndarray:
    # The callback receives jax.Arrays on the CPU: convert first so that no JAX op runs here.
    timer = _host_timer
    if timer is None:
        return assign_host(np.asarray(cost), np.asarray(n_valid))
    start = time.perf_counter()
    out = assign_host(np.asarray(cost), np.asarray(n_valid))
    timer(start, time.perf_counter())
    return out


def _match_local(cost: jnp.ndarray, pair_mask: jnp.ndarray) -> jnp.ndarray:
    """Matches one batch shard: cost [L, b, N, M], pair_mask [b, M] -> [L, b, M] int32.

    The real columns are moved first (a stable sort, the identity for packed batches) so that the
    host sees them as the first n_valid columns; the result is moved back afterwards.
    """
    num_layers, b, n, m = cost.shape
    order = jnp.argsort(~pair_mask, axis=-1, stable=True)  # [b, M]: real columns first
    packed = jnp.take_along_axis(cost, jnp.broadcast_to(order[None, :, None, :], cost.shape),
                                 axis=-1)
    n_valid = jnp.broadcast_to(pair_mask.sum(-1, dtype=jnp.int32), (num_layers, b))
    # stop_gradient on the callback *input*: pure_callback has no JVP rule, and stopping only its
    # output does not keep jax.grad from differentiating it.
    flat = jax.pure_callback(
            _host_callback, jax.ShapeDtypeStruct((num_layers * b, m), jnp.int32),
            jax.lax.stop_gradient(packed).reshape(num_layers * b, n, m), n_valid.reshape(-1))
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(flat.reshape(num_layers, b, m),
                               jnp.broadcast_to(inverse[None], (num_layers, b, m)), axis=-1)


def _to_data_sharding(x: jnp.ndarray, spec: P, mesh) -> jnp.ndarray:
    # shard_map rejects an input whose Explicit-mesh type does not already carry `spec`; Auto
    # meshes reshard by themselves.
    if jax.sharding.AxisType.Explicit in tuple(mesh.axis_types):
        return jax.sharding.reshard(x, NamedSharding(mesh, spec))
    return x


def match(cost: jnp.ndarray, pair_mask: jnp.ndarray, mesh) -> jnp.ndarray:
    """Hungarian matching of all layers and images with one host callback per device.

    Works eagerly, inside `jax.jit` and under `jax.grad` (no gradient flows through it), on Auto
    and Explicit meshes and on a mesh of one device. The batch size must divide by the size of
    the mesh's 'data' axis.

    Args:
      cost: [L, B, N, M] from `hoi_cost`.
      pair_mask: [B, M] bool, True on real GT pairs (any order).
      mesh: mesh with a 'data' axis; each device matches its shard of the batch axis.

    Returns:
      [L, B, M] int32: query matched to each GT pair, -1 for padding or no match.
    """
    cost_spec, mask_spec = P(None, DATA_AXIS), P(DATA_AXIS)
    cost = _to_data_sharding(cost, cost_spec, mesh)
    pair_mask = _to_data_sharding(jnp.asarray(pair_mask, bool), mask_spec, mesh)
    sharded = jax.shard_map(_match_local, mesh=mesh, in_specs=(cost_spec, mask_spec),
                            out_specs=cost_spec)
    return sharded(cost, pair_mask)


def _assign_one(cost: jnp.ndarray, real: jnp.ndarray) -> jnp.ndarray:
    """One [N, M] matrix on device -> [M] int32 query per GT column (-1 for padding)."""
    # Padded columns get one constant cost above every real cost. A constant column never
    # changes which assignment of the real columns is optimal (every query pays it the same),
    # and being the dearest it is only used once every real column has a query (which matters
    # when there are more columns than queries). A value at the scale of the real costs rather
    # than PAD_COST keeps the algorithm's float32 potentials precise (at 1e6 a float32 step is
    # 0.06).
    dearest = jnp.max(jnp.where(real[None, :], jnp.abs(cost), 0.0)) + 1.0
    cost = jnp.where(real[None, :], cost, dearest)
    queries, columns = optax.assignment.hungarian_algorithm(cost)
    out = jnp.full(cost.shape[1], -1, jnp.int32).at[columns].set(queries.astype(jnp.int32))
    return jnp.where(real, out, -1)


def match_on_device(cost: jnp.ndarray, pair_mask: jnp.ndarray) -> jnp.ndarray:
    """`match` computed inside the program: optax's Hungarian algorithm on every matrix.

    Args:
      cost: [L, B, N, M] from `hoi_cost`.
      pair_mask: [B, M] bool, True on real GT pairs (any order).

    Returns:
      [L, B, M] int32 as `match`: the query matched to each GT pair, -1 for padding or no match
      (with more real pairs than queries, the pairs left over).
    """
    num_layers, b, n, m = cost.shape
    real = jnp.broadcast_to(jnp.asarray(pair_mask, bool)[None], (num_layers, b, m))
    flat = jax.vmap(_assign_one)(jax.lax.stop_gradient(cost).reshape(-1, n, m),
                                 real.reshape(-1, m))
    return flat.reshape(num_layers, b, m)


BACKENDS = ("scipy", "device")


def build_matcher(matcher_config, mesh) -> Callable[[dict, dict], jnp.ndarray]:
    """Matcher picked by `matcher_config.name` and `.backend` ('scipy' on the host or 'device',
    see the module docstring): returns (outputs, batch) -> indices [L, B, M]."""
    if matcher_config.name != "hungarian_host":
        raise ValueError(f"config.matcher.name = {matcher_config.name!r} is not a known matcher "
                         "(known: 'hungarian_host')")
    if matcher_config.backend not in BACKENDS:
        raise ValueError(f"config.matcher.backend = {matcher_config.backend!r}: expected one of "
                         f"{BACKENDS}")

    def matcher(outputs: dict, batch: dict) -> jnp.ndarray:
        cost = hoi_cost(outputs, batch, matcher_config)
        if matcher_config.backend == "device":
            return match_on_device(cost, batch["pair_mask"])
        return match(cost, batch["pair_mask"], mesh)

    return matcher
