"""Training-free enhancement (TFE, reference §6), the intended version.

CLIP's own opinion of the whole image is added to every query's HOI scores: the cosine of the
image embedding with each HOI text embedding, all but the image's top-k classes set to 0, through
a sigmoid, times a weight (1.0 in the reference), is added to sigmoid(HOI logits) before the
object term of the triplet score (§7.1, §7.2). Masked classes therefore get weight / 2 (a
constant that changes no ranking within a class) and the top-k ones sigmoid(cos) ~ 0.55-0.58.

Differences from the released code (its bugs, all fixed in the reproduction report's fork):
every k is applied to the unmodified scores (the reference zeroes its similarity matrix in place,
so every k after the first behaves as the first), and the similarity uses the transposed text
matrix on one device. No logit scale, as in the reference.
"""
import jax
import jax.numpy as jnp


def similarities(clip_cls: jnp.ndarray, hoi_text: jnp.ndarray) -> jnp.ndarray:
    """Cosines [B, K] of L2-normalised image embeddings `clip_cls` [B, E] with the HOI text
    classifier `hoi_text` [E, K] (the frozen `hoi_visual_projection` kernel, whose columns are
    the L2-normalised prompt embeddings)."""
    return clip_cls @ hoi_text


def bonus(clip_cls: jnp.ndarray, hoi_text: jnp.ndarray, k: int,
          weight: float = 1.0) -> jnp.ndarray:
    """[B, K] float32 added to sigmoid(HOI logits) of every query of each image.

    weight * sigmoid(s) where s is `similarities` with all but each image's `k` largest entries
    set to 0 (1 <= k <= K; ties broken towards the lower class index, as `jax.lax.top_k`).
    """
    s = similarities(clip_cls, hoi_text).astype(jnp.float32)
    num_hois = s.shape[-1]
    if not 1 <= k <= num_hois:
        raise ValueError(f"TFE k={k} must be in [1, {num_hois}]")
    _, top = jax.lax.top_k(s, k)
    keep = jnp.zeros_like(s, bool).at[jnp.arange(s.shape[0])[:, None], top].set(True)
    return weight * jax.nn.sigmoid(jnp.where(keep, s, 0.0))
