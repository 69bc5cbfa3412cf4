"""2-D convolution whose backward pass is written as matrix products (for the ResNet backbone).

The forward pass is `lax.conv_general_dilated`, exactly what `flax.linen.Conv` runs. The backward
pass is the same mathematics as JAX's transpose rule, written so that XLA:CPU runs it fast:

    dW[u, v]     = sum_{b, i, j} xpad[b, s*i + u, s*j + v]^T dy[b, i, j]   (one product per tap)
    dx           = conv(dy, W flipped in space, channels swapped)          (stride 1)
    dxpad[b, s*i + u, s*j + v] += dy[b, i, j] @ W[u, v]^T                  (stride 2, per tap)

Why: XLA:CPU lowers the transposed convolutions to a filter-gradient convolution with the whole
activation map as its window (rhs-dilated for strided layers) and to an lhs-dilated convolution
for the input gradient of strided layers, and transposes every saved activation to a
channel-major layout first. Profiled on the hico config (batch 2, 512x512, 2 cores), those made
the backbone's backward pass 2.6x its forward. Each filter-gradient product contracts the rows
of two 2-D operands, which XLA:CPU's dot reads in place; the stride-1 input gradient is an
ordinary convolution, as fast as the forward (benchmarks/README.md, "Where the time goes"). The
values are equal up to float32 summation order.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _forward(x, kernel, stride: int, padding: int):
    return lax.conv_general_dilated(x, kernel, (stride, stride),
                                    ((padding, padding), (padding, padding)),
                                    dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Square-kernel convolution, symmetric zero padding.

    Args:
      x: [B, H, W, Cin].
      kernel: [k, k, Cin, Cout] (HWIO, as flax's Conv).
      stride, padding: the same in both spatial dimensions.

    Returns:
      [B, Ho, Wo, Cout] with Ho = (H + 2 padding - k) // stride + 1 (likewise Wo).
    """
    return _forward(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
    return _forward(x, kernel, stride, padding), (x, kernel)


def _filter_grad(x, dy):
    """sum_{b,h,w} x^T dy: [B, H, W, Cin], [B, H, W, Cout] -> [Cin, Cout].

    Written as one 2-D product contracting the rows of both operands: XLA:CPU's dot runs that
    without copying either operand (a product contracting three dimensions is first transposed
    to a channel-major layout, a copy of the activation per kernel tap).
    """
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    return lax.dot_general(x2, dy2, (((0,), (0,)), ((), ())))


def _tap_window(xpad, u: int, v: int, stride: int, out_hw: tuple[int, int]):
    """The padded-input window that kernel tap (u, v) reads: rows u, u + s, ... (ho rows),
    likewise columns. [B, Hp, Wp, C] -> [B, ho, wo, C]."""
    b, _, _, c = xpad.shape
    ho, wo = out_hw
    limit = (b, u + stride * (ho - 1) + 1, v + stride * (wo - 1) + 1, c)
    return lax.slice(xpad, (0, u, v, 0), limit, (1, stride, stride, 1))


def _input_grad_stride1(dy, kernel, padding: int):
    """The input gradient of a stride-1 convolution, [B, H, W, Cout] -> [B, H, W, Cin].

    1x1: one product with the kernel's transpose. k x k: a stride-1 convolution of `dy` with the
    kernel flipped in space and its channel axes swapped, padded by k - 1 - padding (the same
    sums; XLA:CPU runs it at the forward's speed, faster than k*k products and scatters).
    """
    k = kernel.shape[0]
    if k == 1:
        return jnp.einsum("bhwo,co->bhwc", dy, kernel[0, 0])
    # The kernel's channel axes swap roles through the dimension numbers ('HWOI': axis 2 holds
    # this convolution's output channels) rather than by a transposed copy of the kernel, which
    # XLA:CPU made for every 3x3 layer (14 ms for each 512-channel kernel of layer4).
    q = k - 1 - padding
    return lax.conv_general_dilated(dy, jnp.flip(kernel, (0, 1)), (1, 1), ((q, q), (q, q)),
                                    dimension_numbers=("NHWC", "HWOI", "NHWC"))


def _input_grad_strided(dy, kernel, stride: int, padding: int, x_shape):
    """The input gradient of a strided convolution: each tap's product with W[u, v]^T scattered
    onto its strided window of the padded input. Returns [B, H, W, Cin]."""
    k = kernel.shape[0]
    _, h, w, _ = x_shape
    ho, wo = dy.shape[1:3]
    p = padding
    hp, wp = h + 2 * p, w + 2 * p
    zero = jnp.zeros((), dy.dtype)
    d_xpad = None
    for u in range(k):
        for v in range(k):
            grad_tap = jnp.einsum("bhwo,co->bhwc", dy, kernel[u, v])
            # Interior padding stride - 1 puts the rows at u, u + s, ...; the rest pads to hp.
            grad_tap = lax.pad(grad_tap, zero,
                               ((0, 0, 0), (u, hp - u - stride * (ho - 1) - 1, stride - 1),
                                (v, wp - v - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
            d_xpad = grad_tap if d_xpad is None else d_xpad + grad_tap
    return d_xpad[:, p:p + h, p:p + w] if p else d_xpad


def _conv2d_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    k = kernel.shape[0]
    p = padding
    xpad = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    out_hw = dy.shape[1:3]
    # Products in the activations' dtype, as JAX's own transpose rule computes them (XLA:CPU has
    # no bfloat16 x bfloat16 -> float32 product; GPUs accumulate bfloat16 products in float32).
    if (k, stride) == (1, 1):
        d_kernel = _filter_grad(xpad, dy)[None, None]
    else:
        d_kernel = jnp.stack([
                jnp.stack([_filter_grad(_tap_window(xpad, u, v, stride, out_hw), dy)
                           for v in range(k)])
                for u in range(k)])
    if stride == 1:
        d_x = _input_grad_stride1(dy, kernel, p)
    else:
        d_x = _input_grad_strided(dy, kernel, stride, p, x.shape)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """Square convolution with `conv2d`'s backward pass; params as `nn.Conv`'s.

    Attributes:
      features: output channels.
      kernel_size: k (a k x k kernel, param `kernel` [k, k, Cin, features]).
      stride: both dimensions.
      padding: symmetric zero padding, both dimensions.
      kernel_init: initializer of the kernel.
      dtype: computation dtype (the params stay float32).
      bias_init: initializer of the param `bias` [features]; None: no bias (the backbone's).
    """
    features: int
    kernel_size: int
    stride: int
    padding: int
    kernel_init: Callable[..., jax.Array]
    dtype: Any = jnp.float32
    bias_init: Optional[Callable[..., jax.Array]] = None

    @nn.compact
    def __call__(self, x):
        """x: [B, H, W, Cin] -> [B, Ho, Wo, features]."""
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
        if self.bias_init is None:
            return y
        return y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
