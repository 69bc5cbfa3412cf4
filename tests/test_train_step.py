"""The data-parallel step: the device count must not change the result; checkpoints round-trip."""
import jax
import numpy as np
import optax
import pytest

from data_pipeline import class_tables
from hoiclip_jax.lib import checkpoints, sharding
from hoiclip_jax.train import matching, optim
from hoiclip_jax.train import step as train_step_lib
from tests import helpers, param_fill

GLOBAL_BATCH = 4
NUM_STEPS = 3
# One device against four: two devices are compared in tests/test_multiprocess.py (one process
# with two devices against two processes with one each) and in the microbatch and per-device
# normaliser tests; a third compile of the tiny step here cost 40-90 s of `make test`.
DEVICE_COUNTS = (1, 4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    config = helpers.tiny_config(helpers.write_tiny_table(str(directory)))
    tables = class_tables.load_class_tables(config.dataset)
    # Filled, not initialised, parameters: any values do, and the init's compile is 6-10 s.
    model, tx, state = param_fill.filled_state(config, tables)
    state = jax.device_get(state)  # host copy: each run donates its own device buffers
    batches = [helpers.random_batch(config, tables.num_hois, tables.num_objects, GLOBAL_BATCH,
                                    seed=s)
               for s in range(NUM_STEPS)]
    return config, model, tx, state, batches


def run_steps(setup, devices, loss_config=None, num_steps=NUM_STEPS):
    """Trains `num_steps` steps on a mesh over `devices`: (final state, metrics of every step)."""
    config, model, tx, state, batches = setup
    mesh = sharding.make_mesh(devices)
    step_fn = train_step_lib.make_train_step(
        model, tx, matching.build_matcher(config.matcher, mesh), loss_config or config.loss, mesh)
    state, history = sharding.put_replicated(state, mesh), []
    for batch in batches[:num_steps]:
        state, metrics = step_fn(state, sharding.put_batch(batch, mesh))
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


@pytest.fixture(scope="module")
def runs(setup):
    """{device count: run_steps} on the first 1 and 4 simulated devices (compiled once each)."""
    assert jax.device_count() >= max(DEVICE_COUNTS), "tests/conftest.py sets simulated devices"
    return {n: run_steps(setup, jax.devices()[:n]) for n in DEVICE_COUNTS}


def max_abs_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("num_devices", DEVICE_COUNTS[1:])
def test_device_count_does_not_change_parameters(setup, runs, num_devices):
    single, single_history = runs[1]
    multi, multi_history = runs[num_devices]
    assert int(multi["step"]) == int(single["step"]) == NUM_STEPS
    for step, (a, b) in enumerate(zip(single_history, multi_history)):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5, err_msg=f"step {step}")
    assert jax.tree.structure(multi) == jax.tree.structure(single)
    # The optimizer's moments are (averages of) the gradients: they must agree closely.
    for a, b in zip(jax.tree.leaves(single["opt_state"]), jax.tree.leaves(multi["opt_state"])):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    # Adam moves a parameter whose gradient is near zero (|g| ~ eps) by a fraction of the learning
    # rate that depends on the gradient's last digits, so the summation order of the sharded
    # reductions shows in a few such elements: with jax 0.11.2 on 4 devices, 1 of 2,048 elements
    # of a conv kernel moved 1.4e-4 (14 % of one step), two of 32 of a norm scale 1.8e-5 (with
    # jax 0.12 all stay below 1e-5). So: no element differs by half a step, and on average the
    # elements of every leaf agree to 1e-5 (a missed or doubled update moves them all by ~lr).
    lr = float(setup[0].optim.lr)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(single["trainable"]),
                            jax.tree.leaves(multi["trainable"])):
        diff = np.abs(np.asarray(b) - np.asarray(a))
        where = jax.tree_util.keystr(path)
        assert diff.max() < 0.5 * lr and diff.mean() < 1e-5, (where, diff.max(), diff.mean())


def test_steps_really_train(setup, runs):
    state, history = runs[1]
    assert max_abs_diff(setup[3]["trainable"], state["trainable"]) > 1e-4
    # Three different batches: the losses are distinct numbers, not one value repeated.
    assert len({round(float(m["loss"]), 6) for m in history}) == NUM_STEPS


def test_per_device_normalizer_follows_the_mesh(setup):
    """A per_device step on 2 devices = the step whose loss has 2 normaliser groups on 1 device."""
    config, _, _, _, batches = setup
    loss_config = config.loss.copy_and_resolve_references()
    loss_config.normalizer = "per_device"
    tables = class_tables.load_class_tables(config.dataset)
    model = helpers.LinearStandIn(2, 4, tables.num_hois, tables.num_objects)
    tx = optax.adamw(1e-2)
    # A host copy: the trainer's step donates the device copy it is given.
    initial = jax.device_get(
        train_step_lib.init_state(model.init(jax.random.PRNGKey(0)), {}, tx, seed=0))

    def first_step(devices, loss_groups=None):
        mesh = sharding.make_mesh(devices)
        matcher = matching.build_matcher(config.matcher, mesh)
        if loss_groups is None:  # the trainer's step: groups = the mesh's size
            step_fn = train_step_lib.make_train_step(model, tx, matcher, loss_config, mesh)
        else:
            loss_fn = train_step_lib.make_loss_fn(model, matcher, loss_config, loss_groups)

            @jax.jit
            def step_fn(state, batch):
                grads, terms = jax.grad(loss_fn, has_aux=True)(
                    state["trainable"], state["frozen"], batch, state["rng"])
                updates, _ = tx.update(grads, state["opt_state"], state["trainable"])
                return {"trainable": optax.apply_updates(state["trainable"], updates)}, terms
        return jax.device_get(step_fn(sharding.put_replicated(initial, mesh),
                                      sharding.put_batch(batches[0], mesh)))

    sharded, sharded_terms = first_step(jax.devices()[:2])
    expected, expected_terms = first_step(jax.devices()[:1], loss_groups=2)
    unsplit, unsplit_terms = first_step(jax.devices()[:1], loss_groups=1)
    for name, value in expected_terms.items():
        np.testing.assert_allclose(sharded_terms[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert max_abs_diff(expected["trainable"], sharded["trainable"]) <= 1e-6
    # The batch is one where the scope matters: 1 group gives other losses and parameters.
    for name in ("loss_hoi_labels", "loss_obj_ce"):
        assert abs(float(unsplit_terms[name]) - float(expected_terms[name])) > 1e-4, name
    assert max_abs_diff(unsplit["trainable"], sharded["trainable"]) > 1e-5


def test_checkpoint_round_trip(runs, tmp_path):
    state, _ = runs[DEVICE_COUNTS[-1]]
    mesh = sharding.make_mesh(jax.devices()[:DEVICE_COUNTS[-1]])
    ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(NUM_STEPS, sharding.put_replicated(state, mesh),
              {"epoch": 0, "step": NUM_STEPS})
    ckpt.wait()
    abstract = checkpoints.abstract_like(state, sharding.replicated(mesh))
    restored, meta = ckpt.restore(ckpt.latest_step(), abstract)
    ckpt.close()
    assert meta == {"epoch": 0, "step": NUM_STEPS}
    flat_a = jax.tree_util.tree_leaves_with_path(state)
    flat_b = jax.tree_util.tree_leaves_with_path(jax.device_get(restored))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_nonfinite_loss_skips_the_update(setup):
    """Robustness case 6: a NaN loss leaves params and optimizer state as they were, except
    the learning-rate schedule's count, which follows the step."""
    config, _, _, _, batches = setup
    loss_config = config.loss.copy_and_resolve_references()
    loss_config.hoi_coef = float("nan")
    tables = class_tables.load_class_tables(config.dataset)
    model = helpers.LinearStandIn(2, 4, tables.num_hois, tables.num_objects)
    tx = optax.adamw(optax.constant_schedule(1e-2))
    initial = jax.device_get(
        train_step_lib.init_state(model.init(jax.random.PRNGKey(0)), {}, tx, seed=0))
    mesh = sharding.make_mesh(jax.devices()[:2])
    for coef, skipped in ((float("nan"), True), (config.loss.hoi_coef, False)):
        loss_config.hoi_coef = coef
        step_fn = train_step_lib.make_train_step(
            model, tx, matching.build_matcher(config.matcher, mesh), loss_config, mesh)
        state, metrics = jax.device_get(step_fn(sharding.put_replicated(initial, mesh),
                                                sharding.put_batch(batches[0], mesh)))
        assert int(state["step"]) == 1 and float(metrics["nonfinite"]) == float(skipped)
        changed = max_abs_diff(initial["trainable"], state["trainable"])
        assert (changed == 0.0) if skipped else (changed > 1e-4)
        assert [int(c) for c in optim.schedule_counts(state["opt_state"])] == [1]
        opt_changed = max_abs_diff(initial["opt_state"],
                                   optim.with_schedule_count(state["opt_state"], 0))
        assert (opt_changed == 0.0) if skipped else np.isfinite(opt_changed)
