"""ResNet backbone with frozen batch norm, and the pixel-mask downsampling (reference §1.2).

torchvision ResNet-50 (v1.5: the stride sits in the 3x3 conv of a bottleneck) with
`FrozenBatchNorm2d`. Only the last stage is returned (DETR's C5 for ResNet-50: 2048 channels,
stride 32). Images are NHWC. Parameter paths are the ones config.optim.groups freezes by regex:
`backbone/stem/{conv,bn}`,
`backbone/layer{i}/block{j}/{conv1,bn1,...,conv3,bn3,downsample_conv,downsample_bn}`; every
frozen-BN module has 'bn' in its name and holds the params `scale, bias, mean, var`.
"""
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hoiclip_jax.models.conv import Conv
from hoiclip_jax.models.remat import NONE, maybe_remat

# torchvision's ResNet init (kaiming_normal_, mode='fan_out', relu); pretrained DETR weights
# replace it in the reference, the demo trains from it.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclass(frozen=True)
class BackboneSpec:
    """Hashable backbone settings (from config.model.backbone)."""
    block: str
    stage_sizes: tuple[int, ...]
    width: int
    frozen_bn_eps: float
    norm: str = "frozen_bn"  # 'frozen_bn' (reference) | 'group_norm' (training from scratch)

    @property
    def out_channels(self) -> int:
        """Channels of the last stage: width * 2**(S-1) * 4 for bottleneck blocks."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * 4

    @property
    def stride(self) -> int:
        """Total stride: 4 for the stem, then 2 per stage after the first."""
        return 4 * 2 ** (len(self.stage_sizes) - 1)


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine: y = x * scale' + (bias - mean * scale').

    scale' = scale * rsqrt(var + eps) as in DETR's FrozenBatchNorm2d. The four arrays are
    params (not batch_stats) so that checkpoints carry them and the optimizer freezes them by
    name. Init is the identity (scale 1, bias 0, mean 0, var 1).
    """
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [..., C] -> [..., C]."""
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        mean = self.param("mean", nn.initializers.zeros, (channels,))
        var = self.param("var", nn.initializers.ones, (channels,))
        # The statistics and affine are float32 params; a bfloat16 x is promoted for the
        # product and the result cast back to the computation dtype.
        mult = scale * jax.lax.rsqrt(var + self.eps)
        return (x * mult + (bias - mean * mult)).astype(self.dtype)


NORMS = ("frozen_bn", "group_norm")


def make_norm(kind: str, eps: float, dtype: Any, name: str) -> nn.Module:
    """The backbone's normalisation layer, named `name` (always containing 'bn').

    'frozen_bn' is the reference (pretrained statistics, never updated). A backbone trained from
    scratch cannot use it: its identity init leaves the activations unnormalised, and they grew
    from std 0.4 to 1.4e3 over the demo's training, drowning the positional encodings added after
    `input_proj`. 'group_norm' (trainable scale and bias, groups of 4+ channels) is the standard
    choice for detectors trained from scratch (He et al., "Rethinking ImageNet Pre-training").
    """
    if kind == "frozen_bn":
        return FrozenBatchNorm(eps, dtype, name=name)
    if kind == "group_norm":
        return _GroupNorm(eps, dtype, name=name)
    raise ValueError(f"config.model.backbone.norm={kind!r}: expected one of {NORMS}")


class _GroupNorm(nn.Module):
    """GroupNorm with min(32, C // 4) groups; params `scale`, `bias`."""
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        groups = min(32, max(1, x.shape[-1] // 4))
        return nn.GroupNorm(num_groups=groups, epsilon=self.eps, dtype=self.dtype,
                            name="norm")(x)


def _conv(features, kernel, stride, name, dtype):
    """Bias-free conv with PyTorch's symmetric padding (kernel // 2); its backward pass runs as
    matrix products (models/conv.py: several times faster on XLA:CPU)."""
    return Conv(features, kernel, stride, kernel // 2, CONV_INIT, dtype, name=name)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4) with a projection shortcut when the shape changes."""
    width: int
    stride: int
    eps: float
    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [B, H, W, Cin] -> [B, H / stride, W / stride, 4 * width]."""
        out_channels = 4 * self.width
        bn = lambda name: make_norm(self.norm, self.eps, self.dtype, name)
        y = nn.relu(bn("bn1")(_conv(self.width, 1, 1, "conv1", self.dtype)(x)))
        y = nn.relu(bn("bn2")(_conv(self.width, 3, self.stride, "conv2", self.dtype)(y)))
        y = bn("bn3")(_conv(out_channels, 1, 1, "conv3", self.dtype)(y))
        if self.stride != 1 or x.shape[-1] != out_channels:
            x = _conv(out_channels, 1, self.stride, "downsample_conv", self.dtype)(x)
            x = bn("downsample_bn")(x)
        return nn.relu(y + x)


class Stem(nn.Module):
    """7x7/2 conv, frozen BN, ReLU, 3x3/2 max pool (padding 1 with -inf, as in PyTorch)."""
    width: int
    eps: float
    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image):
        """image: [B, H, W, 3] -> [B, ~H / 4, ~W / 4, width]."""
        x = _conv(self.width, 7, 2, "conv", self.dtype)(image.astype(self.dtype))
        x = nn.relu(make_norm(self.norm, self.eps, self.dtype, "bn")(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Stage(nn.Module):
    """`num_blocks` bottlenecks; the first one strides by `stride`."""
    width: int
    num_blocks: int
    stride: int
    eps: float
    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [B, H, W, C] -> [B, H / stride, W / stride, 4 * width]."""
        for j in range(self.num_blocks):
            x = Bottleneck(self.width, self.stride if j == 0 else 1, self.eps, self.norm,
                           self.dtype, name=f"block{j}")(x)
        return x


class ResNet(nn.Module):
    """ResNet trunk returning the last stage only.

    Attributes:
      spec: BackboneSpec; only block='bottleneck' exists (ResNet-50 is stage_sizes (3, 4, 6, 3)).
    """
    spec: BackboneSpec
    dtype: Any = jnp.float32
    remat: str = NONE  # models/remat.py: a jax.checkpoint policy for every stage, or 'none'

    @nn.compact
    def __call__(self, image):
        """image: [B, H, W, 3] -> [B, ~H / stride, ~W / stride, spec.out_channels]."""
        if self.spec.block != "bottleneck":
            raise ValueError(f"config.model.backbone.block={self.spec.block!r}: only 'bottleneck' "
                             "is implemented")
        eps, norm = self.spec.frozen_bn_eps, self.spec.norm
        x = Stem(self.spec.width, eps, norm, self.dtype, name="stem")(image)
        stage = maybe_remat(Stage, self.remat)
        for i, num_blocks in enumerate(self.spec.stage_sizes):
            # torchvision: layer1 keeps the stem's resolution, every later stage halves it.
            x = stage(self.spec.width * 2 ** i, num_blocks, 1 if i == 0 else 2, eps, norm,
                      self.dtype, name=f"layer{i + 1}")(x)
        return x


def downsample_mask(mask: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest resampling of a pixel mask, as `F.interpolate(mask.float(), size).bool()`.

    PyTorch's 'nearest' takes source index floor(i * in / out) for output index i.

    Args:
      mask: [B, H, W] bool (True on real pixels).
      size: (h, w) of the feature map.

    Returns:
      [B, h, w] bool.
    """
    height, width = mask.shape[1:]
    def source(n_out, n_in):
        return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int32), n_in - 1)
    return mask[:, source(size[0], height)][:, :, source(size[1], width)]
