"""config.model.remat: rematerialised blocks give the same outputs and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import class_tables
from hoiclip_jax.models import hoiclip, remat
from tests import helpers, param_fill


def _outputs_and_grads(config, tables, params, batch):
    model = hoiclip.build_model(config.model, tables)

    def scalar(params):
        out = model.apply({"params": params}, batch["image"], batch["pixel_mask"],
                          batch["clip_image"], train=False)
        # A weighted sum of every output, so each one's gradient path is exercised.
        return sum(jnp.sum(v * (i + 1)) for i, v in enumerate(jax.tree.leaves(out))), out

    # LLVM -O0: a faster compile; both models are compiled alike.
    grad_fn = jax.jit(jax.value_and_grad(scalar, has_aux=True),
                      compiler_options={"xla_backend_optimization_level": 0})
    (value, out), grads = grad_fn(params)
    return jax.device_get((value, out, grads))


def test_remat_keeps_outputs_and_gradients(tmp_path):
    config = helpers.tiny_config(helpers.write_tiny_table(str(tmp_path)))
    tables = class_tables.load_class_tables(config.dataset)
    abstract = hoiclip.abstract_params(hoiclip.build_model(config.model, tables), config.dataset)
    params = param_fill.fill_params(abstract, seed=0)
    batch = helpers.random_batch(config, tables.num_hois, tables.num_objects, 2)
    plain = _outputs_and_grads(config, tables, params, batch)
    config.model.remat = "nothing_saveable"
    rematerialised_model = hoiclip.build_model(config.model, tables)
    # Same parameter tree: remat adds no scope.
    assert jax.tree.structure(hoiclip.abstract_params(rematerialised_model, config.dataset)) == \
        jax.tree.structure(abstract)
    again = _outputs_and_grads(config, tables, params, batch)
    np.testing.assert_allclose(again[0], plain[0], rtol=1e-6)
    # Recomputation may fuse differently: float32 rounding only.
    helpers.assert_trees_close(plain[1], again[1])
    helpers.assert_trees_close(plain[2], again[2])


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="remat='everything'"):
        remat.check_policy("everything")
