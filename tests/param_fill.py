"""Parameters without `init_params`: random values at the scales of the real init, in
milliseconds instead of the 10-30 s that compiling the initialisers takes on 2 cores. For tests
that need a model's numbers to be realistic but not its exact init (dtype comparisons, timing).
"""
import flax.traverse_util as traverse_util
import jax.numpy as jnp
import numpy as np

from hoiclip_jax.train import optim, step as train_step
from hoiclip_jax.models import hoiclip

LN_INV_TEMPERATURE = float(np.log(1 / 0.07))


def fill_params(abstract: dict, seed: int) -> dict:
    """Random float32 values for a param-shape tree with the magnitudes of the real init:
    kernels N(0, 1/fan_in) (variance preserving), small biases, identity norms, the ln(1/0.07)
    logit scales. Fails on a leaf that is not float32 or that no rule covers."""
    rng = np.random.default_rng(seed)
    values = {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        assert leaf.dtype == jnp.float32, f"{'/'.join(path)} is {leaf.dtype}, not float32"
        name, shape = path[-1], leaf.shape
        if name == "kernel":
            value = rng.normal(0, np.prod(shape[:-1]) ** -0.5, shape)
        elif name in ("bias", "mean"):
            value = rng.normal(0, 0.02, shape) if name == "bias" else np.zeros(shape)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        elif name in ("embedding", "class_embedding"):
            value = rng.normal(0, 0.5, shape)
        elif name in ("logit_scale", "obj_logit_scale"):
            value = np.full(shape, LN_INV_TEMPERATURE)
        else:
            raise AssertionError(f"no fill rule for parameter {'/'.join(path)}")
        values[path] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(values)


def filled_state(config, tables, seed: int = 0):
    """(model, tx, step-0 state) as `state_io.build_state(config, tables, 10)` makes them, but
    with `fill_params` values instead of `init_params`."""
    model = hoiclip.build_model(config.model, tables)
    params = fill_params(hoiclip.abstract_params(model, config.dataset), seed)
    labels = optim.label_params(params, optim.parameter_groups(config))
    trainable, frozen = optim.split_frozen(params, labels)
    tx, _ = optim.make_optimizer(config.optim, optim.split_frozen(labels, labels)[0],
                                 steps_per_epoch=10)
    return model, tx, train_step.init_state(trainable, frozen, tx, config.seed)
