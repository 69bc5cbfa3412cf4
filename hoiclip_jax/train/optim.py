"""Optimizer: parameter groups by regex, frozen/trainable split, AdamW with per-group rates.

The reference (§1.8, §4.1) trains with AdamW (lr 1e-4, backbone 1e-5, weight decay 1e-4 on all
trainable parameters), clips the global gradient norm at 0.1 and drops the rate by 10x once.
Frozen parameters (CLIP, the text-initialised classifiers, FrozenBN, backbone stem and layer1)
get no gradient at all: the trainer differentiates only the `trainable` tree, so they need no
optimizer state and stay out of the clipping norm, as in PyTorch where they have no `.grad`.
"""
import re
from typing import Any, Sequence

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import optax

FROZEN = "frozen"


def label_params(params: Any, rules: Sequence[tuple[str, str]]) -> dict:
    """Names the group of every parameter.

    Args:
      params: nested dict of arrays (or shapes).
      rules: (regex, group) pairs matched with `re.fullmatch` against the '/'-joined path;
        the first matching rule wins.

    Returns:
      A nested dict with the structure of `params` holding group names.

    Raises:
      ValueError: naming the first parameter that no rule matches.
    """
    compiled = [(re.compile(pattern), group) for pattern, group in rules]
    labels = {}
    for path in traverse_util.flatten_dict(params, sep="/"):
        group = next((g for rx, g in compiled if rx.fullmatch(path)), None)
        if group is None:
            raise ValueError(f"parameter '{path}' matches no rule of config.optim.groups")
        labels[path] = group
    return traverse_util.unflatten_dict(labels, sep="/")


def parameter_groups(config) -> tuple[tuple[str, str], ...]:
    """The (regex, group) rules of config.optim.groups, preceded by a rule freezing E_v
    (`verb_projection`) when config.model.train_verb_features is False."""
    rules = tuple((str(pattern), str(group)) for pattern, group in config.optim.groups)
    if not config.model.train_verb_features:
        rules = ((r"verb_projection/.*", FROZEN),) + rules
    return rules


def split_frozen(params: Any, labels: Any) -> tuple[dict, dict]:
    """Splits `params` into (trainable, frozen) nested dicts by the group labels."""
    flat_params = traverse_util.flatten_dict(params)
    flat_labels = traverse_util.flatten_dict(labels)
    trainable = {k: v for k, v in flat_params.items() if flat_labels[k] != FROZEN}
    frozen = {k: v for k, v in flat_params.items() if flat_labels[k] == FROZEN}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Any, frozen: Any) -> dict:
    """Inverse of `split_frozen`."""
    flat = traverse_util.flatten_dict(frozen)
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


def lr_schedule(optim_config, steps_per_epoch: int, multiplier: float = 1.0) -> optax.Schedule:
    """Piecewise-constant rate: `lr * multiplier`, times `lr_drop_factor` at each drop epoch,
    ramped up linearly over the first `warmup_steps` steps (0: no warm-up, as the reference)."""
    boundaries = {int(e) * steps_per_epoch: optim_config.lr_drop_factor
                  for e in optim_config.lr_drop_epochs}
    constant = optax.piecewise_constant_schedule(optim_config.lr * multiplier, boundaries)
    warmup_steps = int(optim_config.warmup_steps)
    if warmup_steps <= 0:
        return constant

    def warmed_up(count):
        # Step 0 already moves (rate lr / warmup_steps), the full rate from step warmup_steps - 1.
        ramp = jnp.minimum(1.0, (count + 1) / warmup_steps)
        return constant(count) * ramp
    return warmed_up


def _is_schedule_state(node) -> bool:
    return isinstance(node, optax.ScaleByScheduleState)


def with_schedule_count(opt_state: Any, count) -> Any:
    """`opt_state` with the step count of every learning-rate schedule set to `count`.

    The train step keeps the old optimizer state on a skipped (non-finite) step, Adam's moments
    and count included; the schedules must still follow the global step, or every later lr drop
    would come one step late per skipped step and the logged lr would not be the applied one.
    """
    def set_count(node):
        if _is_schedule_state(node):
            return optax.ScaleByScheduleState(count=jnp.asarray(count, node.count.dtype))
        return node
    return jax.tree.map(set_count, opt_state, is_leaf=_is_schedule_state)


def schedule_counts(opt_state: Any) -> list:
    """The step counts of the learning-rate schedules in `opt_state`."""
    return [node.count for node in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state)
            if _is_schedule_state(node)]


def make_optimizer(optim_config, trainable_labels: Any, steps_per_epoch: int):
    """AdamW per group after global-norm clipping, for the `trainable` tree only.

    Returns:
      (tx, schedules): the optax transformation and {group: schedule} for logging.
    """
    groups = sorted(set(traverse_util.flatten_dict(trainable_labels).values()))
    unknown = [g for g in groups if g not in optim_config.group_lr_mult]
    if unknown:
        raise ValueError(f"groups {unknown} have no entry in config.optim.group_lr_mult")
    schedules = {g: lr_schedule(optim_config, steps_per_epoch, optim_config.group_lr_mult[g])
                 for g in groups}
    per_group = {
        g: optax.adamw(schedules[g], b1=optim_config.b1, b2=optim_config.b2,
                       eps=optim_config.eps, weight_decay=optim_config.weight_decay)
        for g in groups
    }
    tx = optax.chain(
        optax.clip_by_global_norm(optim_config.grad_clip_norm),
        optax.multi_transform(per_group, trainable_labels),
    )
    return tx, schedules
