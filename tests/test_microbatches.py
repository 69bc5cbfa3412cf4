"""Gradient accumulation: a batch in microbatches gives the update of the batch in one piece."""
import jax
import numpy as np
import optax
import pytest

from data_pipeline import class_tables
from hoiclip_jax.train import losses, matching
from hoiclip_jax.lib import sharding
from hoiclip_jax.train import step as train_step_lib
from tests import helpers, param_fill

GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    config = helpers.tiny_config(helpers.write_tiny_table(str(directory)))
    # Without dropout: otherwise the masks of a microbatch differ from the full batch's.
    config.model.dropout = 0.0
    tables = class_tables.load_class_tables(config.dataset)
    # Filled, not initialised, parameters: any values do, and the init's compile is 6-10 s.
    model, tx, state = param_fill.filled_state(config, tables)
    batch = helpers.random_batch(config, tables.num_hois, tables.num_objects,
                                 GLOBAL_BATCH, seed=3)
    return config, model, tx, jax.device_get(state), batch


def stand_in(setup):
    """`setup` with the linear stand-in for HOICLIP (tests/helpers.py) and AdamW at the
    config's rate: the step's accumulation, matching and losses are the trainer's, and the
    step compiles in seconds instead of tens of seconds."""
    config, _, _, _, batch = setup
    tables = class_tables.load_class_tables(config.dataset)
    model = helpers.LinearStandIn(config.model.dec_layers, config.model.num_queries,
                                  tables.num_hois, tables.num_objects)
    tx = optax.adamw(config.optim.lr)
    return config, model, tx, jax.device_get(model.initial_state(tx)), batch


def one_step(setup, num_devices: int, microbatches: int, normalizer: str = "global"):
    config, model, tx, state, batch = setup
    loss_config = config.loss.copy_and_resolve_references()
    loss_config.normalizer = normalizer
    mesh = sharding.make_mesh(jax.devices()[:num_devices])
    step_fn = train_step_lib.make_train_step(
            model, tx, matching.build_matcher(config.matcher, mesh), loss_config, mesh,
            microbatches)
    state, batch = sharding.put_replicated(state, mesh), sharding.put_batch(batch, mesh)
    # LLVM -O0: the compile is several times faster and the two steps compared are compiled
    # alike.
    compiled = step_fn.lower(state, batch).compile(
            compiler_options={"xla_backend_optimization_level": 0})
    new_state, metrics = compiled(state, batch)
    return jax.device_get(new_state), jax.device_get(metrics)


def config_layers(setup) -> int:
    return setup[0].model.dec_layers


# 1 and 2 devices, and both normaliser scopes (per_device: per-device counts of the whole
# batch). HOICLIP itself on 1 device (its forward must not depend on the batch it is in); the
# 2-device case tests the step (sharded accumulation, per-device normalisers) around the stand-in.
@pytest.mark.parametrize("num_devices,normalizer,model", [(1, "global", "hoiclip"),
                                                          (2, "per_device", "stand_in")])
def test_four_microbatches_equal_one_batch(setup, num_devices, normalizer, model):
    if model == "stand_in":
        setup = stand_in(setup)
    whole_state, whole = one_step(setup, num_devices, 1, normalizer)
    split_state, split = one_step(setup, num_devices, 4, normalizer)
    loss_terms = [k for k in whole if k.startswith("loss_")]
    assert len(loss_terms) == 6 * config_layers(setup)
    for name in loss_terms + ["loss", "grad_norm"]:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # Adam's first moment after one step is (1 - b1) x the clipped gradient: the gradients agree.
    mu = lambda s: [x.mu for x in jax.tree.leaves(
            s["opt_state"], is_leaf=lambda n: hasattr(n, "mu")) if hasattr(x, "mu")]
    assert mu(whole_state)
    helpers.assert_trees_close(mu(whole_state), mu(split_state))
    # Adam's first step moves a parameter by lr * g / (|g| + eps): for the few gradients within
    # a few eps = 1e-8 of zero, a rounding-level change of g moves the update by up to a
    # few % of lr (one of 2,048 backbone kernel elements here); a real difference is a whole lr.
    lr = setup[0].optim.lr
    for whole_param, split_param in zip(jax.tree.leaves(whole_state["trainable"]),
                                        jax.tree.leaves(split_state["trainable"])):
        np.testing.assert_allclose(split_param, whole_param, rtol=1e-5, atol=0.05 * lr)
    assert int(split_state["step"]) == 1 and float(split["nonfinite"]) == 0.0


def test_whole_batch_normalizers_differ_from_a_microbatch_own(setup):
    """The test above could not fail if microbatches normalised by their own counts and those
    happened to agree: here they do not."""
    config, model, _, _, batch = setup
    whole = losses.label_normalizers(batch, config.loss, 1, model.num_queries)
    micro = jax.tree.map(lambda x: x[0], train_step_lib.split_microbatches(batch, 4))
    first = losses.label_normalizers(micro, config.loss, 1, model.num_queries)
    assert float(whole["num_pos"][0]) > float(first["num_pos"][0]) > 0


def test_label_normalizers_equal_the_matched_counts(setup):
    """With every GT pair matched, the counts from labels are the ones set_losses derives from
    the matching (identity matching of GT pair m to query m)."""
    config, model, _, _, batch = setup
    n, no_object = model.num_queries, model.num_obj_logits - 1
    pair_mask = np.asarray(batch["pair_mask"])
    indices = np.where(pair_mask, np.arange(pair_mask.shape[1])[None], -1)[None]  # [1, B, M]
    hoi_target, obj_target = losses._per_query_targets(
            indices, dict(batch, pair_mask=pair_mask), n, no_object)
    normalizers = losses.label_normalizers(batch, config.loss, 1, n)
    np.testing.assert_allclose(normalizers["num_pos"][0], float((hoi_target == 1).sum()))
    weights = np.where(np.asarray(obj_target) == no_object, config.loss.eos_coef, 1.0).sum()
    np.testing.assert_allclose(normalizers["weight_sum"][0], weights, rtol=1e-6)
    np.testing.assert_allclose(normalizers["num_pairs"], pair_mask.sum())


def test_microbatching_checks_name_the_fields():
    with pytest.raises(ValueError, match="microbatches=3.*does not split"):
        train_step_lib.check_microbatching(3, 8, 2, max_pairs=3, num_queries=4)
    with pytest.raises(ValueError, match="max_pairs"):
        train_step_lib.check_microbatching(2, 8, 2, max_pairs=65, num_queries=64)
    train_step_lib.check_microbatching(2, 8, 2, max_pairs=3, num_queries=4)
