"""Rematerialisation (activation checkpointing) of the model's repeated blocks.

`config.model.remat` names a policy of `jax.checkpoint_policies` ('nothing_saveable' keeps only
each block's inputs and recomputes the rest in the backward pass; 'dots_saveable' keeps the
matrix-product results and recomputes the cheap element-wise work) or is 'none'. It applies to
the ResNet stages, the encoder and instance-decoder layers and the interaction decoder's fusion
layers: everything that the backward pass goes through. The CLIP towers are frozen and no
gradient reaches them, so they keep no activations for the backward pass to begin with.
Parameter paths do not change (flax's lifted remat adds no scope).
"""
from typing import Type

import flax.linen as nn
import jax

NONE = "none"


def policy_names() -> tuple[str, ...]:
    """'none' and the policies of jax.checkpoint_policies that take no arguments."""
    names = [n for n in dir(jax.checkpoint_policies) if n.endswith("_saveable")
             and not n.startswith("_") and n not in ("save_any_names_but_these",)]
    return (NONE,) + tuple(sorted(names))


def check_policy(policy: str) -> None:
    if policy not in policy_names():
        raise ValueError(f"config.model.remat={policy!r}: expected one of {policy_names()}")


def maybe_remat(module: Type[nn.Module], policy: str, static_argnums: tuple = ()):
    """`module`, or `nn.remat(module)` with the named policy. `static_argnums` count `self` as
    0 (flax's convention), e.g. the `deterministic` flag of a layer."""
    check_policy(policy)
    if policy == NONE:
        return module
    return nn.remat(module, policy=getattr(jax.checkpoint_policies, policy),
                    static_argnums=static_argnums)
