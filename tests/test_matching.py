"""Matcher: host LSAP vs brute force, sharded callback under jit/grad, hand-computed costs."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from hoiclip_jax.train import matching
from tests import helpers


def _brute_force(cost: np.ndarray, n_valid: int) -> tuple[float, np.ndarray]:
    """Minimal total cost and GT column -> query (-1 none) by trying every assignment."""
    n, m = cost.shape
    best_total, best = np.inf, np.full(m, -1)
    if n_valid == 0:
        return 0.0, best
    if n_valid <= n:  # every GT column gets a distinct query
        for queries in itertools.permutations(range(n), n_valid):
            total = sum(cost[q, j] for j, q in enumerate(queries))
            if total < best_total:
                best_total, best = total, np.array(list(queries) + [-1] * (m - n_valid))
    else:  # more GT than queries: every query gets a distinct GT column
        for cols in itertools.permutations(range(n_valid), n):
            total = sum(cost[q, j] for q, j in enumerate(cols))
            if total < best_total:
                best_total, best = total, np.full(m, -1)
                best[list(cols)] = np.arange(n)
    return best_total, best


def _check_against_brute_force(cost, n_valid):
    out = matching.assign_host(cost, n_valid)
    assert out.shape == cost.shape[::2] and out.dtype == np.int32
    for x in range(cost.shape[0]):
        ref_total, ref = _brute_force(cost[x], int(n_valid[x]))
        got = out[x]
        total = sum(cost[x, q, j] for j, q in enumerate(got) if q >= 0)
        np.testing.assert_allclose(total, ref_total, rtol=1e-12)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n,m", [(6, 4), (4, 4), (3, 4), (1, 3), (5, 2)])
def test_assign_host_equals_brute_force(n, m):
    rng = np.random.default_rng(n * 10 + m)
    n_valid = np.array([0, m, 1, m, max(m - 1, 0), 0])  # mixed batch, empty images included
    cost = rng.normal(size=(len(n_valid), n, m))
    padding = np.arange(m)[None, None, :] >= n_valid[:, None, None]
    cost = np.where(padding, matching.PAD_COST, cost)  # what hoi_cost puts there
    _check_against_brute_force(cost, n_valid)


def test_assign_host_more_gt_than_queries_leaves_gt_unmatched():
    cost = np.random.default_rng(0).normal(size=(1, 2, 4))
    out = matching.assign_host(cost, np.array([4]))
    assert (out >= 0).sum() == 2 and sorted(out[out >= 0]) == [0, 1]


def test_assign_host_never_raises_on_bad_numbers():
    cost = np.random.default_rng(0).normal(size=(3, 4, 2))
    cost[0, 1, 0] = np.nan
    cost[1, :, :] = np.inf
    out = matching.assign_host(cost, np.array([2, 2, 7]))  # n_valid above M is clipped
    assert out.shape == (3, 2) and (out[:, :2] >= 0).all()
    assert out[0, 0] != 1  # the NaN entry counts as a padding cost, never as the best
    np.testing.assert_array_equal(matching.assign_host(np.zeros((2, 0, 3)), np.array([3, 0])),
                                  -np.ones((2, 3)))


def _random_costs(rng, num_layers=3, b=8, n=6, m=4):
    n_valid = rng.integers(0, m + 1, size=b)
    n_valid[0] = 0
    pair_mask = np.arange(m)[None] < n_valid[:, None]
    cost = rng.normal(size=(num_layers, b, n, m)).astype(np.float32)
    return cost, pair_mask, n_valid


def _mesh(num_devices, axis_type):
    return jax.make_mesh((num_devices,), ("data",), axis_types=(axis_type,),
                         devices=jax.devices()[:num_devices])


def _recording_assign(monkeypatch):
    seen = []
    original = matching.assign_host

    def record(cost, n_valid):
        seen.append((type(cost), cost.shape))
        return original(cost, n_valid)

    monkeypatch.setattr(matching, "assign_host", record)
    return seen


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("presharded", [True, False])
def test_match_in_jit_on_four_devices(monkeypatch, axis_type, presharded):
    cost, pair_mask, n_valid = _random_costs(np.random.default_rng(1))
    expected = matching.assign_host(cost.reshape(-1, 6, 4), np.tile(n_valid, 3)).reshape(3, 8, 4)
    mesh = _mesh(4, axis_type)
    args = (jnp.asarray(cost), jnp.asarray(pair_mask))
    if presharded:
        args = (jax.device_put(cost, NamedSharding(mesh, P(None, "data"))),
                jax.device_put(pair_mask, NamedSharding(mesh, P("data"))))
    seen = _recording_assign(monkeypatch)
    out = jax.jit(lambda c, mask: matching.match(c, mask, mesh))(*args)
    np.testing.assert_array_equal(np.asarray(out), expected)
    # One callback per device, each on its shard of 2 images x 3 layers, given as numpy.
    assert seen == [(np.ndarray, (6, 6, 4))] * 4


def test_match_on_one_device_mesh_eagerly(monkeypatch):
    cost, pair_mask, n_valid = _random_costs(np.random.default_rng(2), b=5)
    expected = matching.assign_host(cost.reshape(-1, 6, 4), np.tile(n_valid, 3)).reshape(3, 5, 4)
    seen = _recording_assign(monkeypatch)
    out = matching.match(jnp.asarray(cost), jnp.asarray(pair_mask), _mesh(1, AxisType.Explicit))
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert [shape for _, shape in seen] == [(15, 6, 4)]


def test_match_handles_unpacked_pair_mask():
    """Real pairs need not come first: match packs them on device and unpacks the result."""
    rng = np.random.default_rng(3)
    cost, pair_mask, _ = _random_costs(rng)
    perm = np.stack([rng.permutation(4) for _ in range(8)])  # [B, M] shuffle of the columns
    cost_perm = np.take_along_axis(cost, perm[None, :, None, :], axis=-1)
    mask_perm = np.take_along_axis(pair_mask, perm, axis=-1)
    mesh = _mesh(4, AxisType.Auto)
    packed = np.asarray(matching.match(jnp.asarray(cost), jnp.asarray(pair_mask), mesh))
    shuffled = np.asarray(jax.jit(lambda c, mask: matching.match(c, mask, mesh))(cost_perm,
                                                                                 mask_perm))
    np.testing.assert_array_equal(shuffled, np.take_along_axis(packed, perm[None], axis=-1))
    assert (shuffled[:, ~mask_perm] == -1).all()


def test_grad_through_a_loss_that_matches():
    cost, pair_mask, _ = _random_costs(np.random.default_rng(4))
    mesh = _mesh(4, AxisType.Auto)
    pred = jnp.asarray(cost)

    def loss(p, fixed=None):
        idx = matching.match(p, pair_mask, mesh) if fixed is None else fixed
        picked = jnp.take_along_axis(p, jnp.clip(idx, 0)[:, :, None, :], axis=2)[:, :, 0]
        return jnp.where(idx >= 0, picked, 0.0).sum()

    grad = jax.jit(jax.grad(loss))(pred)
    idx = matching.match(pred, pair_mask, mesh)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(jax.grad(loss)(pred, idx)))
    assert np.asarray(grad).sum() == (np.asarray(idx) >= 0).sum() > 0


def _matcher_config(**weights):
    base = dict(name="hungarian_host", backend="scipy", cost_hoi=0.0, cost_obj=0.0, cost_bbox=0.0, cost_giou=0.0)
    return mlc.ConfigDict(dict(base, **weights))


def _tiny_case():
    """2 queries, 1 real GT pair (+ 1 padded column), K = 3 HOI classes, O = 2 objects."""
    outputs = {
            "hoi_logits": np.array([[[[0.0, 2.0, -1.0], [1.0, -2.0, 0.5]]]], np.float32),
            "obj_logits": np.array([[[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]]], np.float32),
            "sub_boxes": np.array([[[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.4]]]], np.float32),
            "obj_boxes": np.array([[[[0.6, 0.5, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]]], np.float32),
    }
    batch = {
            "hoi_labels": np.array([[[0, 1, 1], [0, 0, 0]]], np.float32),
            "obj_labels": np.array([[1, 0]], np.int32),
            "sub_boxes": np.array([[[0.5, 0.5, 0.2, 0.2], [0, 0, 0, 0]]], np.float32),
            "obj_boxes": np.array([[[0.6, 0.6, 0.2, 0.2], [0, 0, 0, 0]]], np.float32),
            "obj_exists": np.array([[True, False]]),
            "pair_mask": np.array([[True, False]]),
    }
    return outputs, batch


def _hand_costs(outputs, batch, obj_exists=True):
    """Every §2.1 component for the real GT pair of `_tiny_case`, one value per query."""
    sig = lambda x: 1 / (1 + np.exp(-x))
    t = batch["hoi_labels"][0, 0]
    costs = {k: [] for k in ("hoi", "obj", "bbox", "giou")}
    for q in range(2):
        p = sig(outputs["hoi_logits"][0, 0, q].astype(np.float64))
        costs["hoi"].append(-(p @ t / (t.sum() + 1e-4)
                              + (1 - p) @ (1 - t) / ((1 - t).sum() + 1e-4)) / 2)
        logits = outputs["obj_logits"][0, 0, q].astype(np.float64)
        costs["obj"].append(-np.exp(logits[1]) / np.exp(logits).sum())
        ps, po = outputs["sub_boxes"][0, 0, q], outputs["obj_boxes"][0, 0, q]
        gs, go = batch["sub_boxes"][0, 0], batch["obj_boxes"][0, 0]
        l1_s, l1_o = np.abs(ps - gs).sum(), np.abs(po - go).sum()
        g_s, g_o = -helpers.hand_giou(ps, gs), -helpers.hand_giou(po, go)
        if obj_exists:
            costs["bbox"].append(max(l1_s, l1_o))
            costs["giou"].append(max(g_s, g_o))
        else:
            costs["bbox"].append(max(l1_s, 0.0))
            costs["giou"].append(max(g_s, g_o + g_s))
    return {k: np.array(v) for k, v in costs.items()}


@pytest.mark.parametrize("obj_exists", [True, False])
def test_hoi_cost_reproduces_hand_computed_components(obj_exists):
    outputs, batch = _tiny_case()
    batch["obj_exists"][0, 0] = obj_exists
    hand = _hand_costs(outputs, batch, obj_exists)
    for component, weight in (("hoi", "cost_hoi"), ("obj", "cost_obj"), ("bbox", "cost_bbox"),
                              ("giou", "cost_giou")):
        cost = np.asarray(matching.hoi_cost(outputs, batch, _matcher_config(**{weight: 1.0})))
        assert cost.shape == (1, 1, 2, 2)
        np.testing.assert_allclose(cost[0, 0, :, 0], hand[component], rtol=1e-5, atol=1e-6,
                                   err_msg=component)
        np.testing.assert_array_equal(cost[0, 0, :, 1], matching.PAD_COST)  # padded GT column

    full = _matcher_config(cost_hoi=1.0, cost_obj=1.0, cost_bbox=2.5, cost_giou=1.0)
    expected = hand["hoi"] + hand["obj"] + 2.5 * hand["bbox"] + hand["giou"]
    np.testing.assert_allclose(np.asarray(matching.hoi_cost(outputs, batch, full))[0, 0, :, 0],
                               expected, rtol=1e-5)
    # cost_hoi is applied twice, as in the reference.
    cost = np.asarray(matching.hoi_cost(outputs, batch, _matcher_config(cost_hoi=2.0)))
    np.testing.assert_allclose(cost[0, 0, :, 0], 4 * hand["hoi"], rtol=1e-5)


def test_hoi_cost_guards_nan_and_stops_gradient():
    outputs, batch = _tiny_case()
    outputs["sub_boxes"] = outputs["sub_boxes"].copy()
    outputs["sub_boxes"][0, 0, 1] = np.nan
    config = _matcher_config(cost_hoi=1.0, cost_obj=1.0, cost_bbox=2.5, cost_giou=1.0)
    cost = np.asarray(matching.hoi_cost(outputs, batch, config))
    assert np.isfinite(cost).all() and cost[0, 0, 1, 0] == matching.PAD_COST
    grad = jax.grad(lambda o: matching.hoi_cost(o, batch, config).sum())(
            jax.tree.map(jnp.asarray, _tiny_case()[0]))
    assert all((np.asarray(g) == 0).all() for g in jax.tree.leaves(grad))


def test_build_matcher_runs_and_rejects_unknown_names():
    outputs, batch = _tiny_case()
    mesh = _mesh(1, AxisType.Auto)
    config = _matcher_config(cost_hoi=1.0, cost_obj=1.0, cost_bbox=2.5, cost_giou=1.0)
    indices = np.asarray(matching.build_matcher(config, mesh)(outputs, batch))
    cost = np.asarray(matching.hoi_cost(outputs, batch, config))[0, 0, :, 0]
    np.testing.assert_array_equal(indices, [[[np.argmin(cost), -1]]])
    with pytest.raises(ValueError, match="'sinkhorn'"):
        matching.build_matcher(_matcher_config(name="sinkhorn"), mesh)
