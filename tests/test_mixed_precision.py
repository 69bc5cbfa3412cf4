"""Mixed precision: config.model.dtype = 'bfloat16' computes activations in bfloat16 while the
parameters, the optimizer state, the model outputs, the losses and the matcher stay float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from data_pipeline import class_tables
from hoiclip_jax.train import matching
from hoiclip_jax.lib import sharding
from hoiclip_jax.train import step as train_step_lib
from hoiclip_jax.models import hoiclip
from tests import helpers, param_fill

# bfloat16-vs-float32 gaps of the demo-size forward below, measured on CPU with `fill_params`
# seeds 0-2 as max |bf16 - fp32| / max |fp32| per output: hoi_logits 1.2-2.4 %, obj_logits
# 0.8-1.4 %, clip_visual 0.7-0.8 %, clip_cls 0.7-0.9 %; sub_boxes / obj_boxes (absolute, in
# [0, 1]) 2.0e-3-2.9e-3. (With `init_params` instead: hoi 1.5 %, obj 1.2 %, boxes 5e-4.) The
# bounds are 2-3x the worst seed.
RELATIVE_TOLERANCE = {"hoi_logits": 0.05, "obj_logits": 0.04, "clip_visual": 0.025,
                      "clip_cls": 0.025}
BOX_TOLERANCE = 8e-3
# XLA:CPU at LLVM -O0 compiles these programs about twice as fast; the results only move by
# rounding, far inside the tolerances above.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return helpers.write_tiny_table(str(tmp_path_factory.mktemp("mixed")))


def output_dtypes(jaxpr, primitives: set[str]) -> dict[str, set[str]]:
    """{primitive: dtypes of its outputs} over a jaxpr and every jaxpr nested in it."""
    found = {}

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in primitives:
                found.setdefault(eqn.primitive.name, set()).update(
                        str(v.aval.dtype) for v in eqn.outvars)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if hasattr(sub, "eqns"):
                        visit(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        visit(sub.jaxpr)
    visit(jaxpr.jaxpr)
    return found


def demo_model(table_path: str, dtype: str):
    config = demo.get_config()
    config.dataset.class_table = table_path
    config.model.dtype = dtype
    config.optim.warmup_steps = 0  # the step test checks the loss falls within 8 steps
    tables = class_tables.load_class_tables(config.dataset)
    return config, tables, hoiclip.build_model(config.model, tables)


def test_bfloat16_forward_of_the_demo_model_is_close_to_float32(table_path):
    config, tables, model16 = demo_model(table_path, "bfloat16")
    _, _, model32 = demo_model(table_path, "float32")
    # Params stay float32 under a bfloat16 model (fill_params asserts it leaf by leaf).
    params = param_fill.fill_params(hoiclip.abstract_params(model16, config.dataset), seed=0)
    batch = helpers.random_batch(config, tables.num_hois, tables.num_objects,
                                 batch_size=4)
    inputs = (batch["image"], batch["pixel_mask"], batch["clip_image"])
    apply = lambda model: lambda p, *x: model.apply({"params": p}, *x, train=False)
    # The bfloat16 model computes its convolutions and most matmuls in bfloat16, while every
    # exp (the attention softmax, the logit scales), rsqrt (LayerNorm / GroupNorm / FrozenBN
    # statistics) and cumsum (sine positions) stays float32. The float32 model has no bf16.
    found = output_dtypes(jax.make_jaxpr(apply(model16))(params, *inputs),
                          {"conv_general_dilated", "dot_general", "exp", "rsqrt", "cumsum"})
    assert found["conv_general_dilated"] == {"bfloat16"}
    assert found["dot_general"] == {"bfloat16", "float32"}  # float32: heads, projections
    assert found["exp"] == found["rsqrt"] == found["cumsum"] == {"float32"}, found
    assert "bf16[" not in str(jax.make_jaxpr(apply(model32))(params, *inputs))

    out16 = jax.jit(apply(model16), compiler_options=FAST_COMPILE)(params, *inputs)
    out32 = jax.jit(apply(model32), compiler_options=FAST_COMPILE)(params, *inputs)
    assert set(out16) == set(out32)
    for key in out16:
        a, b = np.asarray(out16[key]), np.asarray(out32[key])
        assert out16[key].dtype == jnp.float32, key
        assert np.isfinite(a).all(), key
        gap = np.abs(a - b).max()
        assert gap > 0, f"{key}: bfloat16 and float32 agree exactly; is dtype ignored?"
        if key in RELATIVE_TOLERANCE:
            assert gap <= RELATIVE_TOLERANCE[key] * np.abs(b).max(), (key, gap, np.abs(b).max())
        else:
            assert gap <= BOX_TOLERANCE, (key, gap)


def test_bfloat16_train_step_keeps_float32_state_and_lowers_the_loss(table_path):
    config = helpers.tiny_config(table_path)
    config.model.dtype = "bfloat16"
    tables = class_tables.load_class_tables(config.dataset)
    model, tx, state = param_fill.filled_state(config, tables)
    assert model.dtype == jnp.bfloat16
    mesh = sharding.make_mesh(jax.devices()[:2])
    step = train_step_lib.make_train_step(
            model, tx, matching.build_matcher(config.matcher, mesh), config.loss, mesh)
    batch = sharding.put_batch(helpers.random_batch(
            config, tables.num_hois, tables.num_objects, batch_size=4), mesh)
    state = sharding.put_replicated(state, mesh)
    step = step.lower(state, batch).compile(compiler_options=FAST_COMPILE)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    assert np.isfinite(losses).all(), losses
    # One fixed batch: AdamW at the demo's lr 1e-3 fits it within a few steps (measured on CPU:
    # 9.01, 8.26, 7.18, 6.88, 6.53, 6.25, 6.03, 5.80).
    assert min(losses[-2:]) < 0.7 * losses[0], losses
    floats = [x for x in jax.tree.leaves((state["trainable"], state["frozen"], state["opt_state"]))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
