"""Multi-head attention with PyTorch `nn.MultiheadAttention` semantics, and shared init helpers.

The reference (§1.3, §1.5, §1.8) uses `nn.MultiheadAttention` everywhere: one packed
`in_proj_weight [3D, D]` split into q/k/v, biases, scaled dot product, a key padding mask and
dropout on the attention probabilities. Here q/k/v/out are four `Dense` layers named `q_proj,
k_proj, v_proj, out_proj`, so a PyTorch checkpoint maps by splitting `in_proj_weight` in three (and
transposing), and the Hugging Face CLIP checkpoints map without renaming.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hoiclip_jax.models.dropout import Dropout

Initializer = Callable[..., jax.Array]

# xavier_uniform_ on the packed [3D, D] in_proj_weight (§1.8) draws from U(±sqrt(6 / (D + 3D))).
# For one [D, D] slice that is a fan_avg variance scaling with scale 1/2.
PACKED_QKV_INIT = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
XAVIER_UNIFORM = nn.initializers.xavier_uniform()
# torch.nn.Linear / Conv default: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in)).
TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Initializer:
    """torch.nn.Linear / Conv default bias init: U(±1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def layer_norm(name: str | None = None, dtype: Any = jnp.float32) -> nn.LayerNorm:
    """PyTorch-equivalent LayerNorm: eps 1e-5, two-pass variance (name None inside `setup`)."""
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / ||x|| along `axis` (as `x / x.norm(dim=-1, keepdim=True)` in the reference).

    Computed and returned in at least float32: the results feed the cosine classifiers, whose
    logits are scaled by exp(logit_scale) ~ 14, so bfloat16 rounding (8-bit mantissa) would
    move them by ~0.03.
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


class MultiheadAttention(nn.Module):
    """`nn.MultiheadAttention(D, num_heads, dropout)` with batch-first inputs.

    Attributes:
      num_heads: number of heads; D must be divisible by it.
      dropout: dropout rate on the attention probabilities.
      qkv_init / out_init / bias_init: initializers (defaults: §1.8, packed xavier, zero
        biases).
      dtype: computation dtype of the projections and of probs @ v. The attention logits are
        accumulated and returned in float32 and the softmax runs in float32 whatever `dtype`.
    """
    num_heads: int
    dropout: float = 0.0
    qkv_init: Initializer = PACKED_QKV_INIT
    out_init: Initializer = XAVIER_UNIFORM
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query, key, value, key_mask=None, attn_mask=None, deterministic=True):
        """Attends `query` to `key`/`value`.

        Args:
          query: [B, Lq, D].
          key, value: [B, Lk, D].
          key_mask: optional [B, Lk] bool, True on keys that may be attended (our mask
            convention; PyTorch's key_padding_mask is its negation).
          attn_mask: optional [Lq, Lk] bool, True where query i may attend key j (causal masks).
          deterministic: disables dropout when True.

        Returns:
          [B, Lq, D].
        """
        dim = query.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"attention width {dim} is not divisible by "
                             f"num_heads={self.num_heads}")
        head_dim = dim // self.num_heads
        dense = lambda name, init: nn.Dense(dim, kernel_init=init, bias_init=self.bias_init,
                                            dtype=self.dtype, name=name)
        q = dense("q_proj", self.qkv_init)(query) * head_dim ** -0.5
        k = dense("k_proj", self.qkv_init)(key)
        v = dense("v_proj", self.qkv_init)(value)
        split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, head_dim))
        # float32 logits straight from the accumulator (no bfloat16 rounding before the softmax).
        logits = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k),
                            preferred_element_type=jnp.float32)
        allowed = _allowed(key_mask, attn_mask)
        if allowed is not None:
            logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        probs = Dropout(self.dropout)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, split(v)).reshape(query.shape[:2] + (dim,))
        return dense("out_proj", self.out_init)(out)


def _allowed(key_mask, attn_mask):
    """Combines the masks into one broadcastable [B|1, 1, Lq|1, Lk] bool, or None."""
    allowed = None
    if key_mask is not None:
        allowed = key_mask[:, None, None, :]
    if attn_mask is not None:
        allowed = attn_mask[None, None] if allowed is None else allowed & attn_mask[None, None]
    return allowed
