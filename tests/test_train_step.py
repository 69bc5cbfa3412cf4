"""The data-parallel step: sharding must not change the result; checkpoints round-trip."""
import jax
import numpy as np
import pytest

from data_pipeline import class_tables
from hoiclip_jax import checkpoints, matching, sharding, state_io
from hoiclip_jax import train_step as train_step_lib
from tests import helpers

GLOBAL_BATCH = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    config = helpers.tiny_config(helpers.write_tiny_table(str(directory)))
    tables = class_tables.load_class_tables(config.dataset)
    model, tx, _, state = state_io.build_state(config, tables, steps_per_epoch=10)
    state = jax.device_get(state)  # host copy: each run donates its own device buffers
    batches = [helpers.random_batch(config, tables.num_hois, tables.num_verbs,
                                    tables.num_objects, GLOBAL_BATCH, seed=s) for s in range(2)]
    return config, model, tx, state, batches


def run_steps(setup, devices):
    config, model, tx, state, batches = setup
    mesh = sharding.make_mesh(devices)
    step_fn = train_step_lib.make_train_step(
        model, tx, matching.build_matcher(config.matcher, mesh), config.loss, mesh)
    state = sharding.put_replicated(state, mesh)
    for batch in batches:
        state, metrics = step_fn(state, sharding.put_batch(batch, mesh))
    return jax.device_get(state), jax.device_get(metrics)


def test_sharded_step_equals_single_device_step(setup):
    assert jax.device_count() >= 2, "tests/conftest.py should provide simulated devices"
    single, single_metrics = run_steps(setup, jax.devices()[:1])
    multi, multi_metrics = run_steps(setup, jax.devices()[:4])
    assert int(multi["step"]) == int(single["step"]) == 2
    np.testing.assert_allclose(multi_metrics["loss"], single_metrics["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single["trainable"]), jax.tree.leaves(multi["trainable"])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # The step really trained: parameters moved away from the initial ones.
    initial = setup[3]["trainable"]
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(initial), jax.tree.leaves(single["trainable"])))
    assert moved > 1e-6


def test_checkpoint_round_trip(setup, tmp_path):
    state, _ = run_steps(setup, jax.devices()[:2])
    mesh = sharding.make_mesh(jax.devices()[:2])
    ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(2, sharding.put_replicated(state, mesh), {"epoch": 0, "step": 2})
    ckpt.wait()
    abstract = checkpoints.abstract_like(state, sharding.replicated(mesh))
    restored, meta = ckpt.restore(ckpt.latest_step(), abstract)
    ckpt.close()
    assert meta == {"epoch": 0, "step": 2}
    flat_a = jax.tree_util.tree_leaves_with_path(state)
    flat_b = jax.tree_util.tree_leaves_with_path(jax.device_get(restored))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
