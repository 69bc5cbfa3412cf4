"""DETR parts of HOICLIP: sine positions, encoder and instance decoder (reference §1.2, §1.3).

All layers are post-norm (`pre_norm=False`), with dropout on residual branches, inside the FFN and
on attention probabilities. Sequences are batch-first: [B, S, D]. Masks are True on real
positions; they reach the attention as key masks (the negation of PyTorch's key_padding_mask).
Submodule names follow the PyTorch ones (`self_attn, multihead_attn, linear1, linear2, norm1..3`,
`layer{i}`, `norm`) so that DETR weights map by name.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hoiclip_jax.models.attention import (XAVIER_UNIFORM, MultiheadAttention, layer_norm,
                                         torch_default_bias)
from hoiclip_jax.models.dropout import Dropout
from hoiclip_jax.models.remat import NONE, maybe_remat


def sine_position_embedding(mask: jax.Array, num_pos_feats: int, temperature: float = 10000.0,
                            scale: float = 2 * jnp.pi, eps: float = 1e-6) -> jax.Array:
    """DETR `PositionEmbeddingSine(num_pos_feats, temperature, normalize=True, scale)`.

    Cumulative counts of real pixels along y and x, divided by the last count (+eps) and scaled
    to (0, 2pi]; then sin on even and cos on odd frequencies, interleaved, `[pos_y, pos_x]`.

    Args:
      mask: [B, H, W] bool, True on real pixels.
      num_pos_feats: channels per axis (hidden_dim / 2).

    Returns:
      [B, H, W, 2 * num_pos_feats] float32.
    """
    valid = mask.astype(jnp.float32)
    y_embed = jnp.cumsum(valid, axis=1)
    x_embed = jnp.cumsum(valid, axis=2)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = temperature ** (2 * (jnp.arange(num_pos_feats) // 2) / num_pos_feats)

    def interleave(embed):
        pos = embed[..., None] / dim_t
        pairs = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
        return pairs.reshape(pos.shape)
    return jnp.concatenate([interleave(y_embed), interleave(x_embed)], axis=-1)


def feed_forward(x, dim_feedforward: int, dropout: float, deterministic: bool, dtype: Any):
    """linear2(dropout(relu(linear1(x)))), created in the calling module's scope.

    Kernels xavier_uniform (§1.8), biases at PyTorch's default U(+-1/sqrt(fan_in)).
    """
    dim = x.shape[-1]
    h = nn.Dense(dim_feedforward, kernel_init=XAVIER_UNIFORM, bias_init=torch_default_bias(dim),
                 dtype=dtype, name="linear1")(x)
    h = Dropout(dropout)(nn.relu(h), deterministic=deterministic)
    return nn.Dense(dim, kernel_init=XAVIER_UNIFORM, bias_init=torch_default_bias(dim_feedforward),
                    dtype=dtype, name="linear2")(h)


class EncoderLayer(nn.Module):
    """DETR post-norm encoder layer: self-attention with q = k = src + pos, v = src; FFN."""
    num_heads: int
    dim_feedforward: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, src, pos, mask, deterministic):
        """src, pos: [B, S, D]; mask: [B, S] bool (True = real) -> [B, S, D]."""
        drop = lambda x: Dropout(self.dropout)(x, deterministic=deterministic)
        qk = src + pos
        attn = MultiheadAttention(self.num_heads, self.dropout, dtype=self.dtype, name="self_attn")
        src = layer_norm("norm1", self.dtype)(
            src + drop(attn(qk, qk, src, key_mask=mask, deterministic=deterministic)))
        ffn = feed_forward(src, self.dim_feedforward, self.dropout, deterministic, self.dtype)
        return layer_norm("norm2", self.dtype)(src + drop(ffn))


class DecoderLayer(nn.Module):
    """DETR post-norm decoder layer: self-attention, cross-attention to the memory, FFN."""
    num_heads: int
    dim_feedforward: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tgt, memory, query_pos, pos, mask, deterministic):
        """Updates the queries.

        Args:
          tgt, query_pos: [B, Q, D].
          memory, pos: [B, S, D] encoder output and its positions.
          mask: [B, S] bool, True on real memory positions.

        Returns:
          [B, Q, D].
        """
        drop = lambda x: Dropout(self.dropout)(x, deterministic=deterministic)
        mha = lambda name: MultiheadAttention(self.num_heads, self.dropout, dtype=self.dtype,
                                              name=name)
        qk = tgt + query_pos
        tgt = layer_norm("norm1", self.dtype)(
            tgt + drop(mha("self_attn")(qk, qk, tgt, deterministic=deterministic)))
        cross = mha("multihead_attn")(tgt + query_pos, memory + pos, memory, key_mask=mask,
                                      deterministic=deterministic)
        tgt = layer_norm("norm2", self.dtype)(tgt + drop(cross))
        ffn = feed_forward(tgt, self.dim_feedforward, self.dropout, deterministic, self.dtype)
        return layer_norm("norm3", self.dtype)(tgt + drop(ffn))


class Encoder(nn.Module):
    """`num_layers` encoder layers, no final norm (DETR post-norm)."""
    num_layers: int
    num_heads: int
    dim_feedforward: int
    dropout: float
    dtype: Any = jnp.float32
    remat: str = NONE  # models/remat.py

    @nn.compact
    def __call__(self, src, pos, mask, deterministic=True):
        """src, pos: [B, S, D]; mask: [B, S] bool -> memory [B, S, D]."""
        layer = maybe_remat(EncoderLayer, self.remat, static_argnums=(4,))
        for i in range(self.num_layers):
            src = layer(self.num_heads, self.dim_feedforward, self.dropout, self.dtype,
                               name=f"layer{i}")(src, pos, mask, deterministic)
        return src


class InstanceDecoder(nn.Module):
    """DETR decoder returning every layer's output through one shared final LayerNorm."""
    num_layers: int
    num_heads: int
    dim_feedforward: int
    dropout: float
    dtype: Any = jnp.float32
    remat: str = NONE  # models/remat.py

    @nn.compact
    def __call__(self, tgt, memory, query_pos, pos, mask, deterministic=True):
        """Decodes the joint human + object queries.

        Args:
          tgt, query_pos: [B, Q, D] (Q = 2N: humans first, then objects).
          memory, pos: [B, S, D]; mask: [B, S] bool.

        Returns:
          [L, B, Q, D], each layer passed through `norm`.
        """
        norm = layer_norm("norm", self.dtype)
        layer = maybe_remat(DecoderLayer, self.remat, static_argnums=(6,))
        outputs = []
        for i in range(self.num_layers):
            tgt = layer(self.num_heads, self.dim_feedforward, self.dropout, self.dtype,
                               name=f"layer{i}")(tgt, memory, query_pos, pos, mask, deterministic)
            outputs.append(norm(tgt))
        return jnp.stack(outputs)
