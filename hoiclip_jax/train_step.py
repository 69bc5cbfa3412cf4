"""The jitted, data-parallel training step.

State: `{'step': i32[], 'trainable': params, 'frozen': params, 'opt_state': optax state,
'rng': u32[2]}`, replicated over the mesh. The batch (docs/design.md) is sharded on 'data'.
One step = forward, costs on device, Hungarian assignment on the host (one callback per step
and device), set losses, gradients of the trainable parameters only, AdamW.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hoiclip_jax import losses, optim, sharding


def seen_labels(batch: dict, columns: tuple[int, ...]) -> dict:
    """The batch with `hoi_labels` [B, M, K] cut to the `columns` [K_train] a zero-shot model
    trains on (`HOICLIP.train_hois`, ascending), as its training `hoi_logits`; unchanged for
    `columns == ()`. The zero-shot filter of the training split already removed every pair
    with an unseen HOI, so no positive label is dropped."""
    if not columns:
        return batch
    return dict(batch, hoi_labels=batch["hoi_labels"][..., np.asarray(columns)])


def make_loss_fn(model, matcher: Callable, loss_config, num_devices: int = 1) -> Callable:
    """(trainable, frozen, batch, rng) -> (total loss, loss terms).

    `num_devices` (the mesh's 'data' size) only matters for `loss_config.normalizer ==
    'per_device'`, which normalises each device's batch shard on its own. Under a zero-shot
    setting the matcher and the losses see the seen HOI columns only (`seen_labels`).
    """
    # Stand-in models of the tests have no zero-shot columns.
    columns = getattr(model, "train_hois", ())

    def loss_fn(trainable, frozen, batch, rng):
        params = optim.merge_params(trainable, frozen)
        outputs = model.apply({"params": params}, batch["image"], batch["pixel_mask"],
                              batch["clip_image"], train=True, rngs={"dropout": rng})
        batch = seen_labels(batch, columns)
        indices = matcher(outputs, batch)
        terms = losses.set_losses(outputs, batch, indices, loss_config, num_devices)
        return losses.total_loss(terms, loss_config), terms

    return loss_fn


def make_train_step(model, tx: optax.GradientTransformation, matcher: Callable, loss_config,
                    mesh) -> Callable:
    """Returns `step(state, batch) -> (state, metrics)`, jitted with the state donated.

    `metrics['nonfinite']` is 1.0 when the loss or the gradient norm was NaN or inf; the
    returned state then holds the old parameters and optimizer state (step count + 1).
    """
    loss_fn = make_loss_fn(model, matcher, loss_config, mesh.shape[sharding.DATA_AXIS])
    repl = sharding.replicated(mesh)

    @functools.partial(jax.jit, donate_argnums=(0,), out_shardings=(repl, repl))
    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        # Dropout differs per step but not per device: the key is folded with the step only, and
        # the partitionable threefry generator gives every device its slice of one global draw.
        rng = jax.random.fold_in(state["rng"], state["step"])
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["trainable"], state["frozen"], batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient never reaches the parameters or the optimizer state:
        # the step is skipped (its count still advances, so the data stream stays in place)
        # and flagged; train.py skips on or stops (`train.nonfinite`).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = dict(state, step=state["step"] + 1,
                         opt_state=keep(opt_state, state["opt_state"]),
                         trainable=keep(optax.apply_updates(state["trainable"], updates),
                                        state["trainable"]))
        metrics = dict(terms, loss=loss, grad_norm=grad_norm,
                       nonfinite=(~finite).astype(jnp.float32))
        return new_state, metrics

    return step


def init_state(trainable: Any, frozen: Any, tx: optax.GradientTransformation, seed: int) -> dict:
    """The step-0 train state on the host (place it with `sharding.put_replicated`)."""
    return {
        "step": jax.numpy.zeros((), jax.numpy.int32),
        "trainable": trainable,
        "frozen": frozen,
        "opt_state": tx.init(trainable),
        "rng": jax.random.PRNGKey(seed),  # raw u32[2]: checkpoints as a plain array
    }
