"""Dropout that draws four 16-bit uniforms per threefry call (for the train step on CPU).

`flax.linen.Dropout` draws one 32-bit uniform per element through `jax.random.bernoulli`; with
the partitionable threefry generator (jax's default) every element then costs a whole
threefry2x32 evaluation, whose 64 output bits are folded to 32. The step draws about 25 million
dropout decisions (encoder attention probabilities are [B, 8, HW, HW] per layer), which made
the DETR encoder's training forward pass 5x its inference pass on the 2-core CPU
(benchmarks/README.md, "Where the time goes"). Here each threefry evaluation yields four 16-bit
uniforms, so the generator runs a quarter as often.

Semantics as `nn.Dropout(rate)`: keep with probability 1 - rate, scale kept values by
1 / (1 - rate), identity when deterministic. The keep probability is quantised to 1/65536
(rate 0.1 keeps with probability 58982 / 65536 = 0.899994), a deviation of 6e-6 from the
reference's Bernoulli(0.9) that no training statistic can resolve (docs/reference.md §11); the
masks themselves differ from flax's (neither equals PyTorch's, whose generator is another one).

Partitioning: the counter of every word is its index in a [B, words per row] grid built from
iota, and the words of a row only fill that row, so a batch-sharded activation gets its slice of
one global draw without communication, as with jax's partitionable threefry.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

_LEVELS = 1 << 16  # 16-bit uniforms


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
    """Bool mask of `shape`, each entry True with probability round(keep_prob * 2^16) / 2^16.

    Args:
      key: a raw uint32[2] key or a typed threefry key.
      shape: the mask shape; its first dimension is the batch (the partitioned one).
      keep_prob: in [0, 1].
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rows = shape[0] if shape else 1
    per_row = math.prod(shape[1:]) if shape else 1
    words = -(-per_row // 4)  # four 16-bit uniforms per threefry evaluation (2 x 32 bits)
    if rows * words >= 2 ** 32:
        raise ValueError(f"dropout mask of shape {shape} is too large for 32-bit counters")
    counter = (jax.lax.broadcasted_iota(jnp.uint32, (rows, words), 0) * jnp.uint32(words)
               + jax.lax.broadcasted_iota(jnp.uint32, (rows, words), 1))
    bits1, bits2 = threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(counter), counter)
    low, threshold = jnp.uint32(_LEVELS - 1), jnp.uint32(round(keep_prob * _LEVELS))
    # Compared before concatenating: the joined (and saved for the backward pass) mask is then
    # one byte per element instead of four.
    lanes = [(bits1 & low) < threshold, (bits1 >> 16) < threshold,
             (bits2 & low) < threshold, (bits2 >> 16) < threshold]
    return jnp.concatenate(lanes, axis=1)[:, :per_row].reshape(shape)


class Dropout(nn.Module):
    """`nn.Dropout(rate)` with `keep_mask`'s generator (module docstring); rng 'dropout'."""
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """x: any shape, batch first -> same shape and dtype."""
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        keep = keep_mask(self.make_rng("dropout"), x.shape, keep_prob)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
