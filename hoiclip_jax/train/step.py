"""The jitted, data-parallel training step.

State: `{'step': i32[], 'trainable': params, 'frozen': params, 'opt_state': optax state,
'rng': u32[2]}`, replicated over the mesh. The batch (docs/design.md) is sharded on 'data'.
One step = forward, costs on device, Hungarian assignment on the host (one callback per step
and device), set losses, gradients of the trainable parameters only, AdamW.

Gradient accumulation (`microbatches` > 1, config.train.microbatches): the batch is cut into
microbatches inside the jitted step and a `lax.scan` sums their losses and gradients before
one optimizer update. The loss normalisers (DETR's counts of GT labels, boxes and object-CE
weights) are those of the whole global batch (`losses.label_normalizers`), so the update equals
the full-batch update up to float rounding, while the activations of only one microbatch are
alive at a time.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hoiclip_jax.train import losses, optim
from hoiclip_jax.lib import sharding


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

    def loss_fn(trainable, frozen, batch, rng, normalizers=None):
        params = optim.merge_params(trainable, frozen)
        outputs = model.apply({"params": params}, batch["image"], batch["pixel_mask"],
                              batch["clip_image"], train=True, rngs={"dropout": rng})
        batch = seen_labels(batch, columns)
        # Named scopes label the operations for benchmarks/profile_step.py.
        with jax.named_scope("matcher"):
            indices = matcher(outputs, batch)
        with jax.named_scope("losses"):
            terms = losses.set_losses(outputs, batch, indices, loss_config, num_devices,
                                      normalizers)
            return losses.total_loss(terms, loss_config), terms

    return loss_fn


def check_microbatching(microbatches: int, batch_size: int, num_devices: int,
                        max_pairs: int, num_queries: int) -> None:
    """Raises a ValueError naming the config field when `microbatches` cannot split the batch
    exactly: each device's shard must divide into microbatches, and no image may hold more GT
    pairs than there are queries (else a pair could stay unmatched and the whole-batch
    normalisers, taken from the labels, would differ from the matched counts)."""
    if microbatches < 1:
        raise ValueError(f"config.train.microbatches={microbatches}: must be >= 1")
    if microbatches == 1:
        return
    per_device = batch_size // max(num_devices, 1)
    if batch_size % num_devices or per_device % microbatches:
        raise ValueError(f"config.train.microbatches={microbatches}: the batch of {batch_size} "
                         f"images on {num_devices} devices ({per_device} per device) does not "
                         "split into that many microbatches")
    if max_pairs > num_queries:
        raise ValueError(f"config.train.microbatches={microbatches} needs "
                         f"config.dataset.max_pairs ({max_pairs}) <= config.model.num_queries "
                         f"({num_queries}): every GT pair must be matched")


def split_microbatches(batch: dict, microbatches: int) -> dict:
    """[B, ...] -> [microbatches, B / microbatches, ...]; microbatch i holds images i,
    i + microbatches, i + 2 microbatches, ... Strided rather than contiguous so that every
    microbatch takes the same share of each device's contiguous shard of a 'data'-sharded
    batch: the split moves no data between devices."""
    def split(x):
        x = x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(split, batch)


def _accumulated_grads(loss_fn: Callable, model, loss_config, num_devices: int,
                       microbatches: int) -> Callable:
    """(trainable, frozen, batch, rng) -> ((loss, terms), grads) of the whole batch, as
    `jax.value_and_grad(loss_fn, has_aux=True)` gives it, summed over microbatches.

    The `loss_*` terms add up over the microbatches (whole-batch normalisers); the logged-only
    metrics (`obj_class_error`, `hoi_top5_recall`) are their mean over the microbatches.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
        return grad_fn
    columns = getattr(model, "train_hois", ())

    def accumulate(trainable, frozen, batch, rng):
        normalizers = losses.label_normalizers(seen_labels(batch, columns), loss_config,
                                               num_devices, model.num_queries)

        def body(grads_sum, inputs):
            index, micro = inputs
            (loss, terms), grads = grad_fn(trainable, frozen, micro, jax.random.fold_in(rng, index),
                                           normalizers)
            return jax.tree.map(jnp.add, grads_sum, grads), (loss, terms)

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grads, (loss, terms) = jax.lax.scan(
                body, zeros, (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
        terms = {k: v.sum() if k.startswith("loss_") else v.mean() for k, v in terms.items()}
        return (loss.sum(), terms), grads

    return accumulate


def _apply_optimizer(tx: optax.GradientTransformation, grads, opt_state, params):
    """(new params, new optimizer state) after one `tx` update."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def make_train_step(model, tx: optax.GradientTransformation, matcher: Callable, loss_config,
                    mesh, microbatches: int = 1) -> Callable:
    """Returns `step(state, batch) -> (state, metrics)`, jitted with the state donated.

    `metrics['nonfinite']` is 1.0 when the loss or the gradient norm was NaN or inf; the
    returned state then holds the old parameters and optimizer state (Adam's moments and count),
    with the step and the learning-rate schedules' counts advanced by one.
    `microbatches` > 1 accumulates the gradients of that many microbatches (module docstring;
    `check_microbatching` states when the batch splits).
    """
    num_devices = mesh.shape[sharding.DATA_AXIS]
    loss_fn = make_loss_fn(model, matcher, loss_config, num_devices)
    grad_fn = _accumulated_grads(loss_fn, model, loss_config, num_devices, microbatches)
    repl = sharding.replicated(mesh)

    @functools.partial(jax.jit, donate_argnums=(0,), out_shardings=(repl, repl))
    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        # Dropout differs per step but not per device: the key is folded with the step only, and
        # the partitionable threefry generator gives every device its slice of one global draw.
        rng = jax.random.fold_in(state["rng"], state["step"])
        (loss, terms), grads = grad_fn(state["trainable"], state["frozen"], batch, rng)
        with jax.named_scope("optimizer"):
            grad_norm = optax.tree.norm(grads)
            # A non-finite loss or gradient never reaches the parameters or the optimizer
            # state: the step is skipped (its count still advances, so the data stream stays in
            # place) and flagged; train.py skips on or stops (`train.nonfinite`).
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            # A `cond`, not a `where` between new and old trees: with the where, XLA kept the
            # old (donated) parameters and Adam moments alive next to the new ones and copied
            # every leaf, 0.15 s of a 2 s step on the 2-core CPU (benchmarks/README.md).
            trainable, opt_state = jax.lax.cond(
                    finite, functools.partial(_apply_optimizer, tx), lambda g, o, p: (p, o),
                    grads, state["opt_state"], state["trainable"])
        # The schedules advance on a skipped step too: the lr stays a function of `step`.
        opt_state = optim.with_schedule_count(opt_state, state["step"] + 1)
        new_state = dict(state, step=state["step"] + 1, opt_state=opt_state,
                         trainable=trainable)
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
