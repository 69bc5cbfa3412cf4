"""Q_inter and the CLIP interaction ("knowledge integration") decoder (reference §1.5).

The decoder works at the CLIP vision width W (768 for ViT-B/32). Each fusion layer attends its
queries to the CLIP tokens and to the projected DETR memory with ONE cross-attention module and
ONE LayerNorm shared by both branches, and adds the two post-norm results (the residual is thus
counted twice). There are no positional encodings, and the reference masks nothing: padded
memory positions are attended (`memory_mask=None`); `config.model.mask_padded_memory` passes the
DETR key mask instead, so that the padding of an image cannot move its scores. Dropout: the
reference's 0.1 on residual branches, inside the FFN
and on attention probabilities.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from hoiclip_jax.models.attention import (XAVIER_UNIFORM, MultiheadAttention, layer_norm,
                                          torch_default_bias)
from hoiclip_jax.models.detr import feed_forward
from hoiclip_jax.models.dropout import Dropout
from hoiclip_jax.models.remat import NONE, maybe_remat

Q_INTER_MODES = ("mean", "mix2x2")


class FusionLayer(nn.Module):
    """`TransformerDecoderFusionLayer` (post-norm; §1.5 step 4)."""
    num_heads: int
    dim_feedforward: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tgt, clip_tokens, memory, memory_mask, deterministic):
        """One fusion step.

        Args:
          tgt: [B, N, W] interaction queries.
          clip_tokens: [B, T, W] CLIP tokens (V_s).
          memory: [B, S, W] projected DETR memory (V_d').
          memory_mask: [B, S] bool, True on the memory positions that may be attended, or None
            (the reference: all).

        Returns:
          [B, N, W].
        """
        drop = lambda x: Dropout(self.dropout)(x, deterministic=deterministic)
        mha = lambda name: MultiheadAttention(self.num_heads, self.dropout, dtype=self.dtype,
                                              name=name)
        tgt = layer_norm("norm1", self.dtype)(
            tgt + drop(mha("self_attn")(tgt, tgt, tgt, deterministic=deterministic)))
        # One cross-attention and one norm2 for both memories (code fact of the reference).
        cross = mha("multihead_attn")
        norm2 = layer_norm("norm2", self.dtype)
        from_clip = norm2(tgt + drop(cross(tgt, clip_tokens, clip_tokens,
                                           deterministic=deterministic)))
        from_detr = norm2(tgt + drop(cross(tgt, memory, memory, key_mask=memory_mask,
                                           deterministic=deterministic)))
        tgt = from_clip + from_detr
        ffn = feed_forward(tgt, self.dim_feedforward, self.dropout, deterministic, self.dtype)
        return layer_norm("norm3", self.dtype)(tgt + drop(ffn))


def _dense(features: int, fan_in: int, name: str, dtype: Any) -> nn.Dense:
    """A transformer-module Dense: xavier kernel (§1.8), PyTorch default bias."""
    return nn.Dense(features, kernel_init=XAVIER_UNIFORM, bias_init=torch_default_bias(fan_in),
                    dtype=dtype, name=name)


class InteractionQuery(nn.Module):
    """Q_inter [B, N, W] from the last instance-decoder layer (§1.5 step 2).

    'mean' (paper): norm(proj((h + o) / 2)). 'mix2x2' (reproduction variant): a learned 2x2
    mixing with bias of the (human, object) pair per feature channel, the shared `proj` applied
    to both mixed vectors, summed, then `norm`.
    """
    width: int
    mode: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_last, o_last):
        """h_last, o_last: [B, N, D] -> [B, N, W]."""
        dim = h_last.shape[-1]
        proj = _dense(self.width, dim, "proj", self.dtype)
        if self.mode == "mean":
            q = proj((h_last + o_last) / 2)
        elif self.mode == "mix2x2":
            pair = jnp.stack([h_last, o_last], axis=-1)                 # [B, N, D, 2]
            mixed = _dense(2, 2, "mix", self.dtype)(pair)               # [B, N, D, 2]
            q = proj(jnp.swapaxes(mixed, -1, -2)).sum(axis=-2)          # [B, N, W]
        else:
            raise ValueError(f"config.model.q_inter={self.mode!r}: expected one of "
                             f"{Q_INTER_MODES}")
        return layer_norm("norm", self.dtype)(q)


class InteractionDecoder(nn.Module):
    """Builds Q_inter (`q_inter`) and V_d' (`memory_proj`, `memory_norm`), runs the fusion layers.

    Attributes:
      width: CLIP vision width W.
      num_layers: config.model.inter_dec_layers.
      num_heads, dim_feedforward, dropout: of the fusion layers.
      q_inter: 'mean' or 'mix2x2' (see InteractionQuery).
    """
    width: int
    num_layers: int
    num_heads: int
    dim_feedforward: int
    dropout: float
    q_inter: str
    dtype: Any = jnp.float32
    remat: str = NONE  # models/remat.py

    @nn.compact
    def __call__(self, h_last, o_last, memory, clip_tokens, deterministic=True,
                 memory_mask=None):
        """Decodes interaction features.

        Args:
          h_last, o_last: [B, N, D] last instance-decoder layer (human / object halves).
          memory: [B, S, D] DETR encoder output (padded positions included).
          clip_tokens: [B, T, W] post_layernorm of all CLIP tokens.
          memory_mask: optional [B, S] bool, True on real (unpadded) memory positions; None
            attends to every position, as the reference.

        Returns:
          [L, B, N, W], every layer passed through the shared final `norm`.
        """
        dim = memory.shape[-1]
        memory_clip = layer_norm("memory_norm", self.dtype)(
            _dense(self.width, dim, "memory_proj", self.dtype)(memory))
        tgt = InteractionQuery(self.width, self.q_inter, self.dtype, name="q_inter")(h_last, o_last)
        # Q_inter, for analysis (see hoiclip.INTERMEDIATES); "q_inter" is the submodule's name.
        self.sow("intermediates", "queries", tgt)
        norm = layer_norm("norm", self.dtype)
        layer = maybe_remat(FusionLayer, self.remat, static_argnums=(5,))
        outputs = []
        for i in range(self.num_layers):
            tgt = layer(self.num_heads, self.dim_feedforward, self.dropout, self.dtype,
                        name=f"layer{i}")(tgt, clip_tokens, memory_clip, memory_mask,
                                          deterministic)
            outputs.append(norm(tgt))
        return jnp.stack(outputs)
