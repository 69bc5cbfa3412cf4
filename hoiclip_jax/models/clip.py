"""CLIP image and text towers in the Hugging Face Flax parameter layout (reference §1.5, §1.7).

The parameter tree equals `FlaxCLIPModel.params` (jax-notes D.7): `vision_model/{embeddings,
pre_layrnorm (sic), encoder/layers/{i}, post_layernorm}`, `visual_projection`, `text_model/
{embeddings, encoder/layers/{i}, final_layer_norm}`, `text_projection`, `logit_scale`, so a
`flax_model.msgpack` loads without renaming. Both towers are pre-LN transformers with QuickGELU
and LayerNorm eps 1e-5; the text tower is causal and pools at the EOT token (the largest id).

Pretrained weights: `hoiclip_jax.weights.clip.load_pretrained(folder)` reads a Hugging Face CLIP
model folder (config.json plus flax_model.msgpack or model.safetensors).

Random init (the demo's CLIP; replaced by pretrained weights when they are configured) follows
`CLIPPreTrainedModel._init_weights` of transformers with factor 1: normal embeddings (std 0.02,
class token D^-0.5), q/k/v and fc2 std D^-0.5 (2 layers)^-0.5, out_proj std D^-0.5, fc1 std
(2D)^-0.5, projections std width^-0.5, zero biases.
"""
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hoiclip_jax.models.attention import MultiheadAttention, layer_norm

normal = nn.initializers.normal


@dataclass(frozen=True)
class ClipSpec:
    """Hashable CLIP sizes (config.model.clip without `weights`)."""
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_dim: int

    @property
    def num_image_tokens(self) -> int:
        """CLS + (image_size / patch_size)**2 patches (50 for ViT-B/32 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1


def quick_gelu(x):
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


class ClipMLP(nn.Module):
    """fc2(quick_gelu(fc1(x)))."""
    mlp_dim: int
    num_layers: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [B, T, D] -> [B, T, D]."""
        dim = x.shape[-1]
        fc2_std = dim ** -0.5 * (2 * self.num_layers) ** -0.5
        h = nn.Dense(self.mlp_dim, kernel_init=normal((2 * dim) ** -0.5), dtype=self.dtype,
                     name="fc1")(x)
        fc2 = nn.Dense(dim, kernel_init=normal(fc2_std), dtype=self.dtype, name="fc2")
        return fc2(quick_gelu(h))


class ClipEncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)); x + mlp(ln2(x))."""
    num_heads: int
    mlp_dim: int
    num_layers: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attn_mask=None):
        """x: [B, T, D]; attn_mask: optional [T, T] bool (causal) -> [B, T, D]."""
        dim = x.shape[-1]
        qkv_std = dim ** -0.5 * (2 * self.num_layers) ** -0.5
        attn = MultiheadAttention(self.num_heads, 0.0, qkv_init=normal(qkv_std),
                                  out_init=normal(dim ** -0.5), dtype=self.dtype, name="self_attn")
        h = layer_norm("layer_norm1", self.dtype)(x)
        x = x + attn(h, h, h, attn_mask=attn_mask)
        h = layer_norm("layer_norm2", self.dtype)(x)
        return x + ClipMLP(self.mlp_dim, self.num_layers, self.dtype, name="mlp")(h)


class ClipLayers(nn.Module):
    """The layer collection; children are named '0', '1', ... as in Hugging Face."""
    num_layers: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attn_mask=None):
        for i in range(self.num_layers):
            x = ClipEncoderLayer(self.num_heads, self.mlp_dim, self.num_layers, self.dtype,
                                 name=str(i))(x, attn_mask)
        return x


class ClipEncoder(nn.Module):
    """Wrapper that only exists to reproduce the `encoder/layers/{i}` path."""
    num_layers: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attn_mask=None):
        return ClipLayers(self.num_layers, self.num_heads, self.mlp_dim, self.dtype,
                          name="layers")(x, attn_mask)


class PatchEmbedding(nn.Module):
    """The patch convolution (kernel = stride = P, no padding, no bias) as one matrix product.

    Param `kernel` [P, P, 3, width] (HWIO, as `nn.Conv`'s, so checkpoints are unchanged). Each
    patch is cut out, flattened in (row, column, channel) order and multiplied by the flattened
    kernel: the sums of the convolution, in another order (float32 rounding apart, the same
    numbers). XLA:CPU ran the stride-32 convolution at a fifth of its matrix-product speed
    (benchmarks/README.md, "Where the time goes").
    """
    width: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        """pixel_values: [B, S, S, C] -> [B, (S // P)**2, width], patches in row-major order
        (trailing rows and columns that fill no whole patch are dropped, as 'VALID')."""
        p, (b, height, width_px, c) = self.patch_size, pixel_values.shape
        kernel = self.param("kernel", normal(0.02), (p, p, c, self.width))
        rows, cols = height // p, width_px // p
        x = pixel_values[:, :rows * p, :cols * p].reshape(b, rows, p, cols, p, c)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, rows * cols, p * p * c)
        return x @ kernel.reshape(p * p * c, self.width).astype(self.dtype)


class VisionEmbeddings(nn.Module):
    """Patch conv (no bias) + class token + learned positions."""
    spec: ClipSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        """pixel_values: [B, S, S, 3] NHWC -> [B, 1 + (S / P)**2, D]."""
        s = self.spec
        width = s.vision_width
        cls = self.param("class_embedding", normal(width ** -0.5), (width,))
        patches = PatchEmbedding(width, s.patch_size, self.dtype,
                                 name="patch_embedding")(pixel_values.astype(self.dtype))
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (patches.shape[0], 1, width))
        tokens = jnp.concatenate([cls, patches], axis=1)
        positions = nn.Embed(s.num_image_tokens, width, embedding_init=normal(0.02),
                             name="position_embedding")(jnp.arange(s.num_image_tokens))
        return tokens + positions.astype(tokens.dtype)


class VisionTransformer(nn.Module):
    """CLIP ViT; returns post_layernorm of ALL tokens (reference `ln_post(x)`, §1.5 step 3)."""
    spec: ClipSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        """pixel_values: [B, S, S, 3] -> tokens [B, T, vision_width] (token 0 = CLS)."""
        s = self.spec
        x = VisionEmbeddings(s, self.dtype, name="embeddings")(pixel_values)
        x = layer_norm("pre_layrnorm", self.dtype)(x)
        x = ClipEncoder(s.vision_layers, s.vision_heads, s.vision_mlp_dim, self.dtype,
                        name="encoder")(x)
        return layer_norm("post_layernorm", self.dtype)(x)


class TextEmbeddings(nn.Module):
    """token_embedding(ids) + position_embedding(0..T-1)."""
    spec: ClipSpec

    @nn.compact
    def __call__(self, token_ids):
        """token_ids: [n, T] -> [n, T, text_width]."""
        s = self.spec
        tokens = nn.Embed(s.vocab_size, s.text_width, embedding_init=normal(0.02),
                          name="token_embedding")(token_ids)
        positions = nn.Embed(s.context_length, s.text_width, embedding_init=normal(0.02),
                             name="position_embedding")(jnp.arange(token_ids.shape[1]))
        return tokens + positions[None]


class TextTransformer(nn.Module):
    """CLIP text tower: causal pre-LN transformer, final LayerNorm, pooled at the EOT token."""
    spec: ClipSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, token_ids):
        """token_ids: [n, T] int, T <= context_length -> pooled [n, text_width]."""
        s = self.spec
        length = token_ids.shape[1]
        x = TextEmbeddings(s, name="embeddings")(token_ids)
        causal = jnp.tril(jnp.ones((length, length), bool))
        x = ClipEncoder(s.text_layers, s.text_heads, s.text_mlp_dim, self.dtype,
                        name="encoder")(x.astype(self.dtype), causal)
        x = layer_norm("final_layer_norm", self.dtype)(x)
        # The end-of-text token has the largest id, so argmax finds it (as CLIP does).
        eot = jnp.argmax(token_ids, axis=-1)
        return x[jnp.arange(x.shape[0]), eot]


class CLIP(nn.Module):
    """Both CLIP towers and projections; frozen in HOICLIP (by optimizer group, §1.8).

    Attributes:
      spec: ClipSpec sizes.
      logit_scale_init: initial value of the (unused) CLIP `logit_scale`, ln(1/0.07).
      dtype: computation dtype of the towers (the two projections always run in float32).
    """
    spec: ClipSpec
    logit_scale_init: float
    dtype: Any = jnp.float32

    def setup(self):
        s = self.spec
        self.vision_model = VisionTransformer(s, self.dtype)
        self.text_model = TextTransformer(s, self.dtype)
        # The projections into the joint space run in float32 whatever `dtype`: their outputs
        # are L2-normalised and compared by cosine with the text classifiers (§1.5 step 5, §1.6).
        self.visual_projection = nn.Dense(s.embed_dim, use_bias=False, dtype=jnp.float32,
                                          kernel_init=normal(s.vision_width ** -0.5))
        self.text_projection = nn.Dense(s.embed_dim, use_bias=False, dtype=jnp.float32,
                                        kernel_init=normal(s.text_width ** -0.5))
        # Part of the checkpoint layout; HOICLIP has its own logit scales.
        self.logit_scale = self.param("logit_scale",
                                      nn.initializers.constant(self.logit_scale_init), ())

    def encode_image(self, pixel_values):
        """CLIP image features.

        Args:
          pixel_values: [B, S, S, 3] NHWC, CLIP-normalised, S = spec.image_size.

        Returns:
          image_embeds: [B, E] post_layernorm(CLS) @ visual_projection, not normalised.
          tokens: [B, T, vision_width] post_layernorm of all T tokens (CLS first).
        """
        size = self.spec.image_size
        if pixel_values.shape[1:] != (size, size, 3):
            raise ValueError(f"CLIP image of shape {pixel_values.shape[1:]}, expected ({size}, "
                             f"{size}, 3) from config.model.clip.image_size (check "
                             "config.dataset.clip_image_size)")
        tokens = self.vision_model(pixel_values)
        return self.visual_projection(tokens[:, 0]), tokens

    def project_image(self, x):
        """x: [..., vision_width] -> [..., E] with the visual projection (no normalisation)."""
        return self.visual_projection(x)

    def encode_text(self, token_ids):
        """token_ids: [n, T] int32 (T <= context_length) -> embeddings [n, E], not normalised."""
        if token_ids.shape[1] > self.spec.context_length:
            raise ValueError(f"{token_ids.shape[1]} text tokens exceed config.model.clip."
                             f"context_length={self.spec.context_length}")
        return self.text_projection(self.text_model(token_ids))

    def __call__(self, pixel_values, token_ids):
        """Both towers (used to create every parameter): (image_embeds, tokens, text_embeds)."""
        return self.encode_image(pixel_values) + (self.encode_text(token_ids),)


def abstract_params(spec: ClipSpec) -> dict:
    """The CLIP param tree of `spec` as jax.ShapeDtypeStruct leaves (nothing is computed)."""
    pixels = jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, spec.context_length), jnp.int32)
    init = lambda rng: CLIP(spec, 0.0).init(rng, pixels, tokens)["params"]
    return jax.eval_shape(init, jax.random.PRNGKey(0))
