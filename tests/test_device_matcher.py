"""The on-device matcher (config.matcher.backend='device') against scipy's host assignment."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from data_pipeline import class_tables
from hoiclip_jax.train import matching
from hoiclip_jax.lib import sharding
from hoiclip_jax.train import step as train_step_lib
from tests import helpers
from tests.helpers import LinearStandIn


def _random_case(rng, layers, images, queries, columns):
    """Continuous random costs (no ties) and pair masks with 0..columns real pairs, unpacked."""
    cost = rng.normal(size=(layers, images, queries, columns)).astype(np.float32)
    pair_mask = rng.random((images, columns)) < 0.6
    pair_mask[0] = True   # one full image
    pair_mask[-1] = False  # one image without pairs
    return cost, pair_mask


def _both(cost, pair_mask, devices):
    """(scipy indices, device indices) of one case, jitted over a mesh of `devices`."""
    mesh = sharding.make_mesh(devices)
    host = jax.jit(lambda c, m: matching.match(c, m, mesh))(cost, pair_mask)
    device = jax.jit(matching.match_on_device)(jnp.asarray(cost), jnp.asarray(pair_mask))
    return np.asarray(host), np.asarray(device)


@pytest.mark.parametrize("queries,columns", [(8, 5), (6, 6), (3, 5)])
@pytest.mark.parametrize("num_devices", [1, 2])
def test_device_assignment_equals_scipy_on_random_costs(queries, columns, num_devices):
    # (3, 5): more GT columns than queries, so some real pairs stay unmatched (-1).
    cost, pair_mask = _random_case(np.random.default_rng(queries * 10 + columns), 3, 4,
                                   queries, columns)
    host, device = _both(cost, pair_mask, jax.devices()[:num_devices])
    assert host.shape == device.shape == (3, 4, columns) and device.dtype == np.int32
    np.testing.assert_array_equal(device, host)
    assert (device[:, ~pair_mask] == -1).all()
    matched = (device >= 0).sum(-1)
    np.testing.assert_array_equal(matched, np.minimum(pair_mask.sum(-1), queries)[None]
                                  .repeat(3, 0))


def test_ties_give_an_optimal_deterministic_assignment():
    """All-equal costs: every assignment is optimal. The device picks one, always the same, on
    any number of devices, with distinct queries for all real pairs (scipy may pick another)."""
    cost = np.zeros((2, 2, 4, 3), np.float32)
    pair_mask = np.array([[True, True, False], [True, True, True]])
    outs = [np.asarray(jax.jit(matching.match_on_device)(cost, pair_mask)) for _ in range(2)]
    host, device = _both(cost, pair_mask, jax.devices()[:2])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], device)
    for layer in range(2):
        for image in range(2):
            real = device[layer, image][pair_mask[image]]
            assert (real >= 0).all() and len(set(real)) == len(real)
            assert (host[layer, image][pair_mask[image]] >= 0).all()
    assert (device[:, 0, 2] == -1).all()


def test_train_step_losses_equal_with_either_backend(tmp_path):
    """The trainer's step on 2 devices: the same indices give the same losses and update."""
    config = helpers.tiny_config(helpers.write_tiny_table(str(tmp_path)))
    tables = class_tables.load_class_tables(config.dataset)
    model = LinearStandIn(2, 4, tables.num_hois, tables.num_objects)
    tx = optax.adamw(1e-2)
    initial = jax.device_get(
        model.initial_state(tx))
    batch = helpers.random_batch(config, tables.num_hois, tables.num_objects,
                                 4, seed=1)
    mesh = sharding.make_mesh(jax.devices()[:2])
    results = {}
    for backend in matching.BACKENDS:
        matcher_config = mlc.ConfigDict(dict(config.matcher.to_dict(), backend=backend))
        step_fn = train_step_lib.make_train_step(
                model, tx, matching.build_matcher(matcher_config, mesh), config.loss, mesh)
        results[backend] = jax.device_get(step_fn(sharding.put_replicated(initial, mesh),
                                                  sharding.put_batch(batch, mesh)))
    (host_state, host_terms), (device_state, device_terms) = results["scipy"], results["device"]
    for name, value in host_terms.items():
        np.testing.assert_allclose(device_terms[name], value, rtol=1e-6, err_msg=name)
    for a, b in zip(jax.tree.leaves(host_state), jax.tree.leaves(device_state)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_unknown_backend_is_named():
    config = mlc.ConfigDict(dict(name="hungarian_host", backend="gpu", cost_hoi=1.0,
                                 cost_obj=1.0, cost_bbox=1.0, cost_giou=1.0))
    with pytest.raises(ValueError, match="backend = 'gpu'"):
        matching.build_matcher(config, sharding.make_mesh(jax.devices()[:1]))
